package rulesidecar_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	rulesidecar "github.com/rules-sidecar/rules-sidecar/clients/go"
	rulesidecarv1 "github.com/rules-sidecar/rules-sidecar/clients/go/rulesidecarv1"
)

func secureTLS() rulesidecar.TLS { return rulesidecar.TLS{CAFile: harness.CAFile} }

func mutualTLS() rulesidecar.TLS {
	return rulesidecar.TLS{CAFile: harness.CAFile, CertFile: harness.ClientCertFile, KeyFile: harness.ClientKeyFile}
}

// extractStatus makes an evaluation-token call (ExtractVariables) and returns the status it read.
func extractStatus(sidecar *rulesidecar.Client) (any, error) {
	extracted, err := sidecar.ExtractVariables(context.Background(),
		[]*rulesidecarv1.Extraction{{Variable: "status", Path: "order.status", Required: true}},
		map[string]any{"order": map[string]any{"status": "shipped"}})
	if err != nil {
		return nil, err
	}
	return extracted.Variables["status"], nil
}

func mustExtract(t *testing.T, sidecar *rulesidecar.Client) {
	t.Helper()
	status, err := extractStatus(sidecar)
	if err != nil || status != "shipped" {
		t.Fatalf("want shipped, got %v, %v", status, err)
	}
}

func refusedWith(t *testing.T, sidecar *rulesidecar.Client) codes.Code {
	t.Helper()
	_, err := extractStatus(sidecar)
	return sidecarError(t, err).Code()
}

func dial(t *testing.T, address string, options ...grpc.DialOption) *rulesidecar.Client {
	t.Helper()
	sidecar, err := rulesidecar.New(address, 5*time.Second, options...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sidecar.Close() })
	return sidecar
}

// replaceFile writes as the kubelet does: a new file renamed over the old one.
func replaceFile(t *testing.T, path, text string) {
	t.Helper()
	staged := path + ".new"
	if err := os.WriteFile(staged, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(staged, path); err != nil {
		t.Fatal(err)
	}
}

func TestTheRightTokensOverTLSAreAccepted(t *testing.T) {
	mustExtract(t, dial(t, harness.SecureSidecar, rulesidecar.WithToken(harness.EvaluationToken), rulesidecar.WithTLS(secureTLS())))
	admin := dial(t, harness.SecureSidecar, rulesidecar.WithToken(harness.AdminToken), rulesidecar.WithTLS(secureTLS()))
	registered, err := admin.RegisterConnector(context.Background(), liveConnector("go-secure", "https://x.test/"))
	if err != nil || registered.GetConnector().GetId() != "go-secure" {
		t.Fatalf("register: %v, %v", registered, err)
	}
	if version, err := admin.DeleteConnector(context.Background(), "go-secure"); err != nil || version != 1 {
		t.Fatalf("delete: %v, %v", version, err)
	}
}

func TestNoTokenOrAWrongOneIsUnauthenticated(t *testing.T) {
	if code := refusedWith(t, dial(t, harness.SecureSidecar, rulesidecar.WithTLS(secureTLS()))); code != codes.Unauthenticated {
		t.Fatalf("no token: %v", code)
	}
	wrong := dial(t, harness.SecureSidecar, rulesidecar.WithToken("x"+harness.AdminToken), rulesidecar.WithTLS(secureTLS()))
	if code := refusedWith(t, wrong); code != codes.Unauthenticated {
		t.Fatalf("wrong token: %v", code)
	}
}

func TestTheEvaluationTokenMayNotRegister(t *testing.T) {
	reader := dial(t, harness.SecureSidecar, rulesidecar.WithToken(harness.EvaluationToken), rulesidecar.WithTLS(secureTLS()))
	_, err := reader.RegisterConnector(context.Background(), liveConnector("go-denied", "https://x.test/"))
	if code := sidecarError(t, err).Code(); code != codes.PermissionDenied {
		t.Fatalf("want PermissionDenied, got %v", code)
	}
}

func TestARotatedTokenFileIsReadAgain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte("an-old-token-000000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sidecar := dial(t, harness.SecureSidecar, rulesidecar.WithTokenFile(path), rulesidecar.WithTLS(secureTLS()))
	if code := refusedWith(t, sidecar); code != codes.Unauthenticated {
		t.Fatalf("old token: %v", code)
	}
	replaceFile(t, path, harness.EvaluationToken+"\n")
	mustExtract(t, sidecar)
}

func TestATokenSourceIsAskedBeforeEveryCall(t *testing.T) {
	tokens := []string{harness.EvaluationToken, "revoked-token-0000000000"}
	calls := 0
	source := func(context.Context) (string, error) {
		calls++
		return tokens[min(calls-1, len(tokens)-1)], nil
	}
	sidecar := dial(t, harness.SecureSidecar, rulesidecar.WithTokenSource(source), rulesidecar.WithTLS(secureTLS()))
	mustExtract(t, sidecar)
	if code := refusedWith(t, sidecar); code != codes.Unauthenticated {
		t.Fatalf("revoked token: %v", code)
	}
}

func TestMTLSNeedsTheClientCertificate(t *testing.T) {
	mustExtract(t, dial(t, harness.MTLSSidecar, rulesidecar.WithToken(harness.EvaluationToken), rulesidecar.WithTLS(mutualTLS())))
	uncertified, err := rulesidecar.New(harness.MTLSSidecar, 2*time.Second, rulesidecar.WithToken(harness.EvaluationToken), rulesidecar.WithTLS(secureTLS()))
	if err != nil {
		t.Fatal(err)
	}
	defer uncertified.Close()
	if code := refusedWith(t, uncertified); code != codes.Unavailable {
		t.Fatalf("without a client certificate: %v", code)
	}
}

func TestTheClientCertificateAsBytes(t *testing.T) {
	read := func(path string) []byte {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	settings := rulesidecar.TLS{CA: read(harness.CAFile), Cert: read(harness.ClientCertFile), Key: read(harness.ClientKeyFile)}
	mustExtract(t, dial(t, harness.MTLSSidecar, rulesidecar.WithToken(harness.EvaluationToken), rulesidecar.WithTLS(settings)))
}

func TestAServerTheCADoesNotVouchForIsUnavailable(t *testing.T) {
	// The system's roots do not know the harness's throwaway CA.
	sidecar, err := rulesidecar.New(harness.SecureSidecar, 2*time.Second, rulesidecar.WithToken(harness.EvaluationToken), rulesidecar.WithTLS(rulesidecar.TLS{}))
	if err != nil {
		t.Fatal(err)
	}
	defer sidecar.Close()
	if code := refusedWith(t, sidecar); code != codes.Unavailable {
		t.Fatalf("unknown CA: %v", code)
	}
}

func TestATokenInPlaintextGoesToLoopbackOnly(t *testing.T) {
	// The plain sidecar requires no token: the call shows grpc sends it over plaintext loopback.
	mustExtract(t, dial(t, harness.Sidecar, rulesidecar.WithToken(harness.EvaluationToken)))
	mustExtract(t, dial(t, harness.SidecarUnix, rulesidecar.WithToken(harness.EvaluationToken)))
	_, err := rulesidecar.New("rules.internal:50051", time.Second, rulesidecar.WithToken(harness.EvaluationToken))
	if err == nil || !strings.Contains(err.Error(), "AllowTokenWithoutTLS") {
		t.Fatalf("want a refusal naming AllowTokenWithoutTLS, got %v", err)
	}
	allowed, err := rulesidecar.New("rules.internal:50051", time.Second, rulesidecar.WithToken(harness.EvaluationToken), rulesidecar.AllowTokenWithoutTLS())
	if err != nil {
		t.Fatal(err)
	}
	allowed.Close()
}

func TestABadTLSSettingFailsNew(t *testing.T) {
	_, err := rulesidecar.New(harness.MTLSSidecar, time.Second, rulesidecar.WithTLS(rulesidecar.TLS{CAFile: harness.CAFile, CertFile: harness.ClientCertFile}))
	if err == nil || !strings.Contains(err.Error(), "needs its key") {
		t.Fatalf("want a refusal of a certificate without its key, got %v", err)
	}
}
