// Package rulesidecar is a thin Go client for rules-sidecar: native maps in and out, a default
// deadline, and errors that carry the request's field violations.
//
// The generated package rulesidecarv1 holds every message and the gRPC client; this package adds
// only what is clumsy there: visitor variables from a map[string]any (anything encoding/json can
// marshal), extracted variables back as a map[string]any (numbers as float64, as encoding/json
// decodes them), a connection from "host:port" or "unix:/path" whose calls get a default deadline
// unless their context has one, and *Error with Violations().
//
//	sidecar, err := rulesidecar.New("127.0.0.1:50051", 2*time.Second)
//	if err != nil { ... }
//	defer sidecar.Close()
//	evaluation, err := sidecar.EvaluateNode(ctx, node, map[string]any{"order_number": "A-10023"})
//	fmt.Println(evaluation.Target, evaluation.Variables["order_status"])
package rulesidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	rulesidecarv1 "github.com/rules-sidecar/rules-sidecar/clients/go/rulesidecarv1"
)

// Client is a connection to one sidecar. It is safe for concurrent use; Close it when done.
type Client struct {
	conn    *grpc.ClientConn
	service rulesidecarv1.RulesSidecarServiceClient
}

// New connects to the sidecar at address ("127.0.0.1:50051" or "unix:/run/rules/sidecar.sock",
// plaintext as a sidecar on loopback or a socket is, unless WithTLS says otherwise). Every call
// whose context has no deadline gets timeout. The connection is made lazily, on the first call.
//
// options are this package's credentials (WithToken, WithTokenFile, WithTokenSource, WithTLS,
// WithTLSConfig, AllowTokenWithoutTLS) and any grpc.DialOption. A token without TLS to an address
// that is not loopback or a unix socket is an error unless AllowTokenWithoutTLS is given.
func New(address string, timeout time.Duration, options ...grpc.DialOption) (*Client, error) {
	options, transport, err := credentialOptions(address, options)
	if err != nil {
		return nil, fmt.Errorf("rulesidecar: %w", err)
	}
	options = append(append(transport,
		grpc.WithChainUnaryInterceptor(defaultDeadline(timeout), sidecarErrors),
	), options...)
	conn, err := grpc.NewClient(address, options...)
	if err != nil {
		return nil, fmt.Errorf("rulesidecar: %w", err)
	}
	return &Client{conn: conn, service: rulesidecarv1.NewRulesSidecarServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Service is the generated client on the same connection, for what this package does not wrap
// (ListConnectors, conditional registration and deletion ...). Its calls get the same default
// deadline and return *Error too.
func (c *Client) Service() rulesidecarv1.RulesSidecarServiceClient { return c.service }

// RegisterConnector creates or replaces a connector and returns it as stored, with its version.
func (c *Client) RegisterConnector(ctx context.Context, connector *rulesidecarv1.Connector) (*rulesidecarv1.RegisterConnectorResponse, error) {
	return c.service.RegisterConnector(ctx, &rulesidecarv1.RegisterConnectorRequest{Connector: connector})
}

// GetConnector returns one connector; an unknown id is an *Error with codes.NotFound.
func (c *Client) GetConnector(ctx context.Context, id string) (*rulesidecarv1.Connector, error) {
	response, err := c.service.GetConnector(ctx, &rulesidecarv1.GetConnectorRequest{Id: id})
	if err != nil {
		return nil, err
	}
	return response.GetConnector(), nil
}

// DeleteConnector deletes a connector and returns the version that was deleted.
func (c *Client) DeleteConnector(ctx context.Context, id string) (int64, error) {
	response, err := c.service.DeleteConnector(ctx, &rulesidecarv1.DeleteConnectorRequest{Id: id})
	if err != nil {
		return 0, err
	}
	return response.GetDeletedVersion(), nil
}

// Evaluation is EvaluateNode's verdict with the extracted variables as native Go values.
type Evaluation struct {
	Outcome rulesidecarv1.Outcome
	Reason  rulesidecarv1.Reason
	Message string
	Target  string
	// BranchIndex is the index of the winning branch, or -1 unless Outcome is OUTCOME_MATCHED.
	BranchIndex int
	Variables   map[string]any
	HTTPStatus  int
	// Response is the whole answer: extractions one by one, latency, attempts, explanation.
	Response *rulesidecarv1.EvaluateNodeResponse
}

// EvaluateOption adjusts one EvaluateNode request.
type EvaluateOption func(*rulesidecarv1.EvaluateNodeRequest)

// WithExplanation asks for the explanation of every branch and the rendered request.
func WithExplanation() EvaluateOption {
	return func(request *rulesidecarv1.EvaluateNodeRequest) { request.Explain = true }
}

// InTestMode also runs DRAFT connectors (EVALUATION_MODE_TEST).
func InTestMode() EvaluateOption {
	return func(request *rulesidecarv1.EvaluateNodeRequest) {
		request.Mode = rulesidecarv1.EvaluationMode_EVALUATION_MODE_TEST
	}
}

// EvaluateNode evaluates node for one conversation. Its variables may hold anything encoding/json
// can marshal into a JSON object.
func (c *Client) EvaluateNode(ctx context.Context, node *rulesidecarv1.Node, variables map[string]any, options ...EvaluateOption) (*Evaluation, error) {
	request := &rulesidecarv1.EvaluateNodeRequest{Node: node, Variables: &structpb.Struct{}}
	if variables != nil {
		if err := toProtoJSON(variables, request.Variables); err != nil {
			return nil, fmt.Errorf("rulesidecar: variables: %w", err)
		}
	}
	for _, option := range options {
		option(request)
	}
	response, err := c.service.EvaluateNode(ctx, request)
	if err != nil {
		return nil, err
	}
	branch := -1
	if response.BranchIndex != nil {
		branch = int(response.GetBranchIndex())
	}
	return &Evaluation{
		Outcome:     response.GetOutcome(),
		Reason:      response.GetReason(),
		Message:     response.GetMessage(),
		Target:      response.GetTarget(),
		BranchIndex: branch,
		Variables:   response.GetVariables().AsMap(),
		HTTPStatus:  int(response.GetHttpStatus()),
		Response:    response,
	}, nil
}

// Extracted is ExtractVariables' result with the values as native Go values.
type Extracted struct {
	Variables map[string]any
	// Complete is true when every required extraction succeeded.
	Complete bool
	Response *rulesidecarv1.ExtractVariablesResponse
}

// ExtractVariables applies extractions to a document you already have (anything encoding/json can
// marshal); no HTTP call is made.
func (c *Client) ExtractVariables(ctx context.Context, extractions []*rulesidecarv1.Extraction, document any) (*Extracted, error) {
	value := &structpb.Value{}
	if err := toProtoJSON(document, value); err != nil {
		return nil, fmt.Errorf("rulesidecar: document: %w", err)
	}
	response, err := c.service.ExtractVariables(ctx, &rulesidecarv1.ExtractVariablesRequest{
		Extractions: extractions,
		Document:    &rulesidecarv1.ExtractVariablesRequest_Json{Json: value},
	})
	if err != nil {
		return nil, err
	}
	return &Extracted{response.GetVariables().AsMap(), response.GetComplete(), response}, nil
}

// Violation is one invalid field of a request: its path (connector.url_template) and the problem.
type Violation struct {
	Field       string
	Description string
}

// Error is a failed call. status.Code(err) and status.FromError(err) work on it as on any gRPC
// error; errors.As(err, &sidecarErr) gives the field violations of an INVALID_ARGUMENT.
type Error struct {
	status     *status.Status
	violations []Violation
}

func (e *Error) Error() string { return e.status.Err().Error() }

// Code is the gRPC status code, e.g. codes.InvalidArgument or codes.DeadlineExceeded.
func (e *Error) Code() codes.Code { return e.status.Code() }

// Message is the status message.
func (e *Error) Message() string { return e.status.Message() }

// Violations lists the fields named by the error's google.rpc.BadRequest; empty for other errors.
func (e *Error) Violations() []Violation { return e.violations }

// GRPCStatus lets the grpc/status package read the status.
func (e *Error) GRPCStatus() *status.Status { return e.status }

func defaultDeadline(timeout time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, request, reply any, conn *grpc.ClientConn, invoker grpc.UnaryInvoker, options ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		return invoker(ctx, method, request, reply, conn, options...)
	}
}

func sidecarErrors(ctx context.Context, method string, request, reply any, conn *grpc.ClientConn, invoker grpc.UnaryInvoker, options ...grpc.CallOption) error {
	err := invoker(ctx, method, request, reply, conn, options...)
	if err == nil {
		return nil
	}
	failure, ok := status.FromError(err)
	if !ok {
		return err
	}
	sidecarErr := &Error{status: failure}
	for _, detail := range failure.Details() {
		if badRequest, ok := detail.(*errdetails.BadRequest); ok {
			for _, violation := range badRequest.GetFieldViolations() {
				sidecarErr.violations = append(sidecarErr.violations,
					Violation{Field: violation.GetField(), Description: violation.GetDescription()})
			}
		}
	}
	return sidecarErr
}

// toProtoJSON fills a Struct or Value from any value encoding/json can marshal.
func toProtoJSON(value any, into proto.Message) error {
	data, err := json.Marshal(value)
	if err != nil {
		return err
	}
	return protojson.Unmarshal(data, into)
}
