package rulesidecar_test

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rulesidecar "github.com/rules-sidecar/rules-sidecar/clients/go"
	rulesidecarv1 "github.com/rules-sidecar/rules-sidecar/clients/go/rulesidecarv1"
)

func connect(t *testing.T, address string, timeout time.Duration) *rulesidecar.Client {
	t.Helper()
	sidecar, err := rulesidecar.New(address, timeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sidecar.Close() })
	return sidecar
}

func liveConnector(id, url string) *rulesidecarv1.Connector {
	return &rulesidecarv1.Connector{
		Id:          id,
		Status:      rulesidecarv1.ConnectorStatus_CONNECTOR_STATUS_LIVE,
		UrlTemplate: url,
	}
}

func sidecarError(t *testing.T, err error) *rulesidecar.Error {
	t.Helper()
	var sidecarErr *rulesidecar.Error
	if !errors.As(err, &sidecarErr) {
		t.Fatalf("want a *rulesidecar.Error, got %v", err)
	}
	return sidecarErr
}

func TestRegisterBumpsTheVersionAndTheRegistryReadsItBack(t *testing.T) {
	ctx := context.Background()
	sidecar := connect(t, harness.Sidecar, 5*time.Second)
	connector := liveConnector("go-registry", harness.Upstream+"/vectors/x/{{n}}")
	first, err := sidecar.RegisterConnector(ctx, connector)
	if err != nil {
		t.Fatal(err)
	}
	second, err := sidecar.RegisterConnector(ctx, connector)
	if err != nil {
		t.Fatal(err)
	}
	if !first.GetCreated() || first.GetConnector().GetVersion() != 1 || second.GetCreated() || second.GetConnector().GetVersion() != 2 {
		t.Fatalf("versions: first %v, second %v", first, second)
	}
	stored, err := sidecar.GetConnector(ctx, "go-registry")
	if err != nil || stored.GetUrlTemplate() != connector.GetUrlTemplate() {
		t.Fatalf("GetConnector: %v, %v", stored, err)
	}
	deleted, err := sidecar.DeleteConnector(ctx, "go-registry")
	if err != nil || deleted != 2 {
		t.Fatalf("DeleteConnector: %d, %v", deleted, err)
	}
	_, err = sidecar.GetConnector(ctx, "go-registry")
	if code := sidecarError(t, err).Code(); code != codes.NotFound {
		t.Fatalf("want NotFound, got %v", code)
	}
}

func TestValidationErrorCarriesTheFieldViolations(t *testing.T) {
	sidecar := connect(t, harness.Sidecar, 5*time.Second)
	_, err := sidecar.RegisterConnector(context.Background(), liveConnector("Bad Id", "https://{{tenant}}.example.com/x"))
	sidecarErr := sidecarError(t, err)
	if sidecarErr.Code() != codes.InvalidArgument || status.Code(err) != codes.InvalidArgument {
		t.Fatalf("want InvalidArgument, got %v", err)
	}
	var fields []string
	for _, violation := range sidecarErr.Violations() {
		if violation.Description == "" {
			t.Errorf("violation of %s has no description", violation.Field)
		}
		fields = append(fields, violation.Field)
	}
	for _, want := range []string{"connector.id", "connector.url_template"} {
		if !slices.Contains(fields, want) {
			t.Errorf("violations %v lack %s", fields, want)
		}
	}
}

func TestStaleExpectedVersionIsAbortedThroughTheGeneratedService(t *testing.T) {
	stale := int64(7)
	sidecar := connect(t, harness.Sidecar, 5*time.Second)
	_, err := sidecar.Service().RegisterConnector(context.Background(), &rulesidecarv1.RegisterConnectorRequest{
		Connector:       liveConnector("go-conditional", harness.Upstream+"/vectors/x/y"),
		ExpectedVersion: &stale,
	})
	if sidecarErr := sidecarError(t, err); sidecarErr.Code() != codes.Aborted || len(sidecarErr.Violations()) != 0 {
		t.Fatalf("want Aborted without violations, got %v", err)
	}
}

func TestUnixSocketAddress(t *testing.T) {
	sidecar := connect(t, harness.SidecarUnix, 5*time.Second)
	response, err := sidecar.RegisterConnector(context.Background(), liveConnector("go-unix", harness.Upstream+"/vectors/x/y"))
	if err != nil || response.GetConnector().GetId() != "go-unix" {
		t.Fatalf("RegisterConnector over the unix socket: %v, %v", response, err)
	}
}

func TestExtractVariablesFromANativeDocument(t *testing.T) {
	type item struct {
		Qty int `json:"qty"`
	}
	document := map[string]any{"order": map[string]any{"status": "shipped", "items": []item{{2}, {1}}}}
	extracted, err := connect(t, harness.Sidecar, 5*time.Second).ExtractVariables(context.Background(), []*rulesidecarv1.Extraction{
		{Variable: "status", Path: "order.status", Required: true},
		{Variable: "quantities", Path: "order.items[*].qty"},
		{Variable: "coupon", Path: "order.coupon", Required: true},
	}, document)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"status": "shipped", "quantities": []any{2.0, 1.0}}
	if !reflect.DeepEqual(extracted.Variables, want) || extracted.Complete {
		t.Fatalf("got %#v complete=%v", extracted.Variables, extracted.Complete)
	}
}

func TestDefaultDeadlineBoundsACallToASilentServer(t *testing.T) {
	// Without the default deadline the call never ends and go test's own timeout fails the run;
	// elapsed time is not asserted (timing belongs in the benchmark, not in pass/fail tests).
	_, err := connect(t, harness.Silent, 300*time.Millisecond).GetConnector(context.Background(), "anything")
	if code := sidecarError(t, err).Code(); code != codes.DeadlineExceeded {
		t.Fatalf("want DeadlineExceeded, got %v", err)
	}
}

func TestDeadlineReachesTheSidecarBeforeASlowUpstream(t *testing.T) {
	ctx := context.Background()
	sidecar := connect(t, harness.Sidecar, time.Second)
	if _, err := sidecar.RegisterConnector(ctx, liveConnector("go-slow", harness.Upstream+"/slow/x")); err != nil {
		t.Fatal(err)
	}
	node := &rulesidecarv1.Node{ConnectorId: "go-slow", Branches: []*rulesidecarv1.Branch{{Target: "ok"}}, ErrorTarget: "agent"}
	evaluation, err := sidecar.EvaluateNode(ctx, node, nil)
	// The sidecar keeps 20 ms of the caller's deadline to answer ERROR/TIMEOUT in time; on a busy
	// machine the client's own timer may fire first. Either way the call ends at the deadline: a call
	// without one would wait out the upstream's 5 s and answer MATCHED "ok", which fails here.
	switch {
	case err != nil:
		if code := sidecarError(t, err).Code(); code != codes.DeadlineExceeded {
			t.Fatalf("want DeadlineExceeded, got %v", err)
		}
	case evaluation.Reason != rulesidecarv1.Reason_REASON_TIMEOUT || evaluation.Target != "agent":
		t.Fatalf("want ERROR/TIMEOUT, got %v %v", evaluation.Reason, evaluation.Target)
	}
}
