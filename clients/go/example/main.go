// Command example registers an order-status connector with a running sidecar, evaluates a
// "Where is my order?" node for one order and prints the branch and the extracted status.
//
// With `make run` and `.venv/bin/python examples/demo_order_api.py` running (from the repository
// root):
//
//	go run ./example [sidecar address] [order API base URL]
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	rulesidecar "github.com/rules-sidecar/rules-sidecar/clients/go"
	rulesidecarv1 "github.com/rules-sidecar/rules-sidecar/clients/go/rulesidecarv1"
)

func main() {
	address, orderAPI := "127.0.0.1:50051", "http://127.0.0.1:8081"
	if len(os.Args) > 1 {
		address = os.Args[1]
	}
	if len(os.Args) > 2 {
		orderAPI = os.Args[2]
	}
	// With RULES_SIDECAR_TOKEN_FILE set (as deploy/examples/chat-backend sets it), send that
	// file's token, read again when the file changes.
	var options []grpc.DialOption
	if path := os.Getenv("RULES_SIDECAR_TOKEN_FILE"); path != "" {
		options = append(options, rulesidecar.WithTokenFile(path))
	}
	sidecar, err := rulesidecar.New(address, 5*time.Second, options...)
	if err != nil {
		log.Fatal(err)
	}
	defer sidecar.Close()
	ctx := context.Background()

	registered, err := sidecar.RegisterConnector(ctx, &rulesidecarv1.Connector{
		Id:          "order-status-example",
		DisplayName: "Where is my order? (client example)",
		Status:      rulesidecarv1.ConnectorStatus_CONNECTOR_STATUS_LIVE,
		UrlTemplate: orderAPI + "/orders/{{order_number}}",
		Auth: &rulesidecarv1.Auth{Scheme: &rulesidecarv1.Auth_ApiKey{ApiKey: &rulesidecarv1.ApiKeyAuth{
			Name: "X-API-Key", ValueSecret: "demo_store_api_key",
		}}},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("registered %s version %d\n", registered.GetConnector().GetId(), registered.GetConnector().GetVersion())

	node := &rulesidecarv1.Node{
		Id:          "where-is-my-order",
		ConnectorId: "order-status-example",
		Branches: []*rulesidecarv1.Branch{{
			Target: "show-status",
			Conditions: []*rulesidecarv1.Condition{{
				Subject:  &rulesidecarv1.Subject{Kind: rulesidecarv1.SubjectKind_SUBJECT_KIND_STATUS},
				Operator: rulesidecarv1.Operator_OPERATOR_STATUS_CLASS,
				Operand:  structpb.NewStringValue("2xx"),
			}},
		}},
		ElseTarget:  "ask-for-the-number-again",
		ErrorTarget: "hand-off-to-an-agent",
		Extractions: []*rulesidecarv1.Extraction{{Variable: "order_status", Path: "status", Required: true}},
	}
	for _, order := range []string{"A-10023", "Z-1"} {
		evaluation, err := sidecar.EvaluateNode(ctx, node, map[string]any{"order_number": order})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("order %s: %s branch=%d target=%s order_status=%v\n", order, evaluation.Outcome,
			evaluation.BranchIndex, evaluation.Target, evaluation.Variables["order_status"])
	}

	_, err = sidecar.RegisterConnector(ctx, &rulesidecarv1.Connector{Id: "Bad Id"})
	var sidecarErr *rulesidecar.Error
	if errors.As(err, &sidecarErr) {
		fmt.Println("invalid connector:", sidecarErr.Code())
		for _, violation := range sidecarErr.Violations() {
			fmt.Printf("  %s: %s\n", violation.Field, violation.Description)
		}
	}
}
