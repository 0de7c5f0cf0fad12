package rulesidecar_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"testing"
)

// addresses is the JSON line clients/testdata/harness.py prints once the sidecars are SERVING:
// the plain sidecar, and the secured ones (tokens and TLS; mTLS) with their CA, client
// certificate and tokens.
type addresses struct {
	Sidecar         string `json:"sidecar"`
	SidecarUnix     string `json:"sidecar_unix"`
	Upstream        string `json:"upstream"`
	Silent          string `json:"silent"`
	SecureSidecar   string `json:"secure_sidecar"`
	MTLSSidecar     string `json:"mtls_sidecar"`
	CAFile          string `json:"ca_file"`
	ClientCertFile  string `json:"client_cert_file"`
	ClientKeyFile   string `json:"client_key_file"`
	AdminToken      string `json:"admin_token"`
	EvaluationToken string `json:"evaluation_token"`
}

var harness addresses

// TestMain starts the shared harness (a real sidecar and a loopback upstream) for every test and
// stops it by closing its stdin.
func TestMain(m *testing.M) {
	command := exec.Command("../../.venv/bin/python", "../testdata/harness.py")
	command.Stderr = os.Stderr
	stdin, err := command.StdinPipe()
	if err != nil {
		panic(err)
	}
	stdout, err := command.StdoutPipe()
	if err != nil {
		panic(err)
	}
	if err := command.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "cannot start the harness (run scripts/bootstrap first):", err)
		os.Exit(1)
	}
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &harness)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "the harness did not start:", err)
		_ = command.Wait()
		os.Exit(1)
	}
	code := m.Run()
	stdin.Close()
	_, _ = io.Copy(io.Discard, stdout)
	if err := command.Wait(); err != nil {
		fmt.Fprintln(os.Stderr, "the harness failed:", err)
	}
	os.Exit(code)
}
