package rulesidecar

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// TokenSource returns the bearer token to send with a call; it is asked before every call.
type TokenSource func(ctx context.Context) (string, error)

// WithToken sends token as "authorization: Bearer <token>" with every call.
func WithToken(token string) grpc.DialOption {
	return WithTokenSource(func(context.Context) (string, error) { return token, nil })
}

// WithTokenFile sends the token held in the file at path (surrounding whitespace stripped), read
// again when the file changes: a token mounted from a Kubernetes Secret is rotated without a
// restart. One stat per call; the file is read again when its inode, size or mtime changes.
func WithTokenFile(path string) grpc.DialOption {
	file := &tokenFile{path: path}
	return WithTokenSource(file.token)
}

// WithTokenSource sends the token source returns before every call; an error fails the call.
func WithTokenSource(source TokenSource) grpc.DialOption {
	return credentialOption{token: source}
}

// AllowTokenWithoutTLS lets a token travel without TLS to an address that is not loopback or a
// unix socket, for a network that is trusted (a service mesh that encrypts the hop). Without it,
// New refuses such a client.
func AllowTokenWithoutTLS() grpc.DialOption {
	return credentialOption{allowPlaintextToken: true}
}

// TLS says how to reach a sidecar that serves TLS. The CA is PEM bytes (CA) or a file (CAFile);
// neither trusts the system's roots. CertFile and KeyFile (or Cert and Key, PEM) are the client
// certificate for a sidecar that requires one (mTLS); the files are read at each handshake, so a
// rotated certificate is used on the next connection. ServerName overrides the name checked in the
// sidecar's certificate.
type TLS struct {
	CA, Cert, Key             []byte
	CAFile, CertFile, KeyFile string
	ServerName                string
}

// WithTLS makes the connection TLS (mTLS with a client certificate). New reports a bad setting.
func WithTLS(settings TLS) grpc.DialOption {
	config, err := settings.config()
	return credentialOption{tls: config, err: err}
}

// WithTLSConfig makes the connection TLS with a crypto/tls configuration of your own.
func WithTLSConfig(config *tls.Config) grpc.DialOption {
	return credentialOption{tls: config}
}

// credentialOption is a grpc.DialOption that changes nothing by itself (grpc.EmptyDialOption):
// New reads it, because whether a token may go without TLS depends on the address and on the
// other options, which no single grpc.DialOption sees.
type credentialOption struct {
	grpc.EmptyDialOption
	token               TokenSource
	tls                 *tls.Config
	allowPlaintextToken bool
	err                 error
}

// credentialOptions takes the credential options out of options, and returns the dial options
// that realise them: TLS or plaintext transport, and the token as per-RPC credentials.
func credentialOptions(address string, options []grpc.DialOption) (rest []grpc.DialOption, transport []grpc.DialOption, err error) {
	var token TokenSource
	var config *tls.Config
	allowPlaintextToken := false
	for _, option := range options {
		credential, ok := option.(credentialOption)
		if !ok {
			rest = append(rest, option)
			continue
		}
		if credential.err != nil {
			return nil, nil, credential.err
		}
		if credential.token != nil {
			token = credential.token
		}
		if credential.tls != nil {
			config = credential.tls
		}
		allowPlaintextToken = allowPlaintextToken || credential.allowPlaintextToken
	}
	if config != nil {
		transport = append(transport, grpc.WithTransportCredentials(credentials.NewTLS(config)))
	} else {
		transport = append(transport, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if token != nil {
		if config == nil && !allowPlaintextToken && !isLocal(address) {
			return nil, nil, fmt.Errorf("a bearer token to %s without TLS would cross the network in plaintext: add WithTLS, or AllowTokenWithoutTLS() if the network is trusted", address)
		}
		transport = append(transport, grpc.WithPerRPCCredentials(bearer{source: token, requireTLS: config != nil}))
	}
	return rest, transport, nil
}

// bearer is the token as per-RPC credentials. Over TLS it requires transport security, as grpc
// expects; on plaintext it does not, which grpc allows only because New checked the address.
type bearer struct {
	source     TokenSource
	requireTLS bool
}

func (b bearer) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	token, err := b.source(ctx)
	if err != nil {
		return nil, fmt.Errorf("rulesidecar: token: %w", err)
	}
	return map[string]string{"authorization": "Bearer " + token}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.requireTLS }

type tokenFile struct {
	path  string
	mu    sync.Mutex
	seen  [3]int64
	value string
}

func (f *tokenFile) token(context.Context) (string, error) {
	info, err := os.Stat(f.path)
	if err != nil {
		return "", err
	}
	seen := [3]int64{info.Size(), info.ModTime().UnixNano(), 0}
	if stat, ok := info.Sys().(*syscall.Stat_t); ok {
		seen[2] = int64(stat.Ino)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if seen != f.seen || f.value == "" {
		data, err := os.ReadFile(f.path)
		if err != nil {
			return "", err
		}
		f.value, f.seen = strings.TrimSpace(string(data)), seen
	}
	return f.value, nil
}

func (settings TLS) config() (*tls.Config, error) {
	config := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: settings.ServerName}
	ca, err := pemOf(settings.CA, settings.CAFile)
	if err != nil {
		return nil, err
	}
	if ca != nil {
		config.RootCAs = x509.NewCertPool()
		if !config.RootCAs.AppendCertsFromPEM(ca) {
			return nil, errors.New("rulesidecar: TLS: no certificate in the CA PEM")
		}
	}
	if (settings.Cert == nil && settings.CertFile == "") != (settings.Key == nil && settings.KeyFile == "") {
		return nil, errors.New("rulesidecar: TLS: a client certificate needs its key, and a key its certificate")
	}
	if settings.Cert != nil || settings.CertFile != "" {
		if _, err := settings.clientCertificate(); err != nil {
			return nil, err // a bad certificate fails New, not the first call
		}
		config.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return settings.clientCertificate()
		}
	}
	return config, nil
}

func (settings TLS) clientCertificate() (*tls.Certificate, error) {
	chain, err := pemOf(settings.Cert, settings.CertFile)
	if err != nil {
		return nil, err
	}
	key, err := pemOf(settings.Key, settings.KeyFile)
	if err != nil {
		return nil, err
	}
	certificate, err := tls.X509KeyPair(chain, key)
	if err != nil {
		return nil, fmt.Errorf("rulesidecar: TLS: client certificate: %w", err)
	}
	return &certificate, nil
}

func pemOf(value []byte, path string) ([]byte, error) {
	if value != nil && path != "" {
		return nil, errors.New("rulesidecar: TLS: give the PEM bytes or the file, not both")
	}
	if path == "" {
		return value, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("rulesidecar: TLS: %w", err)
	}
	return bytes.TrimSpace(data), nil
}

// isLocal reports whether address is a unix socket or a loopback address (127.0.0.1:50051,
// localhost:50051, [::1]:50051).
func isLocal(address string) bool {
	if strings.HasPrefix(address, "unix:") || strings.HasPrefix(address, "unix-abstract:") {
		return true
	}
	address = strings.TrimPrefix(address, "dns:///")
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		host = address
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
