package rulesidecar_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	rulesidecar "github.com/rules-sidecar/rules-sidecar/clients/go"
	rulesidecarv1 "github.com/rules-sidecar/rules-sidecar/clients/go/rulesidecarv1"
)

// vector is one case of clients/testdata/vectors.json; connector and node are proto3 JSON.
type vector struct {
	Name      string          `json:"name"`
	Mode      string          `json:"mode"`
	Connector json.RawMessage `json:"connector"`
	Node      json.RawMessage `json:"node"`
	Variables map[string]any  `json:"variables"`
	Expect    struct {
		Outcome     string         `json:"outcome"`
		Reason      string         `json:"reason"`
		Target      string         `json:"target"`
		BranchIndex *int           `json:"branch_index"`
		HTTPStatus  int            `json:"http_status"`
		Variables   map[string]any `json:"variables"`
	} `json:"expect"`
}

func loadVectors(t *testing.T) []vector {
	t.Helper()
	data, err := os.ReadFile("../testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var document struct {
		Cases []vector `json:"cases"`
	}
	if err := json.Unmarshal(data, &document); err != nil {
		t.Fatal(err)
	}
	return document.Cases
}

func TestVectors(t *testing.T) {
	sidecar, err := rulesidecar.New(harness.Sidecar, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer sidecar.Close()
	for _, tc := range loadVectors(t) {
		t.Run(tc.Name, func(t *testing.T) {
			ctx := context.Background()
			connector := &rulesidecarv1.Connector{}
			raw := bytes.ReplaceAll(tc.Connector, []byte("${UPSTREAM}"), []byte(harness.Upstream))
			if err := protojson.Unmarshal(raw, connector); err != nil {
				t.Fatal(err)
			}
			node := &rulesidecarv1.Node{}
			if err := protojson.Unmarshal(tc.Node, node); err != nil {
				t.Fatal(err)
			}
			if _, err := sidecar.RegisterConnector(ctx, connector); err != nil {
				t.Fatal(err)
			}
			var options []rulesidecar.EvaluateOption
			if tc.Mode == "EVALUATION_MODE_TEST" {
				options = append(options, rulesidecar.InTestMode())
			}
			evaluation, err := sidecar.EvaluateNode(ctx, node, tc.Variables, options...)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.Expect
			wantBranch := -1
			if want.BranchIndex != nil {
				wantBranch = *want.BranchIndex
			}
			got := []any{evaluation.Outcome.String(), evaluation.Reason.String(), evaluation.Target, evaluation.BranchIndex, evaluation.HTTPStatus}
			expected := []any{want.Outcome, want.Reason, want.Target, wantBranch, want.HTTPStatus}
			if !reflect.DeepEqual(got, expected) {
				t.Errorf("got %v, want %v (%s)", got, expected, evaluation.Message)
			}
			if !reflect.DeepEqual(evaluation.Variables, want.Variables) {
				t.Errorf("variables: got %#v, want %#v", evaluation.Variables, want.Variables)
			}
		})
	}
}
