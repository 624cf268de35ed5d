package conveyor

import (
	"crypto/tls"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"weak"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// certDir runs scripts/gen-test-certs into a temporary directory.
func certDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	script, _ := filepath.Abs(filepath.Join("..", "..", "scripts", "gen-test-certs"))
	if out, err := exec.Command(script, dir).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return dir
}

func TestTLSSettings(t *testing.T) {
	dir := certDir(t)
	ca, cert, key := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key")
	missing := filepath.Join(dir, "missing.pem")
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	type env map[string]string
	cases := []struct {
		name    string
		addr    string
		env     env
		opts    []grpc.DialOption
		tls     bool     // TLS expected (when no error)
		roots   bool     // a CA bundle loaded
		client  bool     // a client certificate loaded
		wantErr []string // parts of the error
	}{
		{name: "https, system roots", addr: "https://h:1", tls: true},
		{name: "no scheme, nothing set", addr: "h:1"},
		{name: "gRPC target, nothing set", addr: "dns:///h:1"},
		{name: "http", addr: "http://h:1"},
		{name: "no scheme, WithTLS", addr: "h:1", opts: []grpc.DialOption{WithTLS(ca, "", "")}, tls: true, roots: true},
		{name: "no scheme, WithTLS all empty", addr: "h:1", opts: []grpc.DialOption{WithTLS("", "", "")}, tls: true},
		{name: "no scheme, CA from env", addr: "h:1", env: env{TLSCAEnv: ca}, tls: true, roots: true},
		{name: "mTLS from env", addr: "h:1", env: env{TLSCAEnv: ca, TLSCertEnv: cert, TLSKeyEnv: key}, tls: true, roots: true, client: true},
		{name: "mTLS from WithTLS", addr: "https://h:1", opts: []grpc.DialOption{WithTLS(ca, cert, key)}, tls: true, roots: true, client: true},
		{name: "option wins over env", addr: "h:1", env: env{TLSCAEnv: missing, TLSCertEnv: missing, TLSKeyEnv: missing},
			opts: []grpc.DialOption{WithTLS(ca, cert, key)}, tls: true, roots: true, client: true},
		{name: "WithTLSConfig ignores env", addr: "h:1", env: env{TLSCAEnv: missing},
			opts: []grpc.DialOption{WithTLSConfig(&tls.Config{ServerName: "x"})}, tls: true},
		{name: "last TLS option wins", addr: "h:1", opts: []grpc.DialOption{WithTLS(missing, "", ""), WithTLS(ca, "", "")}, tls: true, roots: true},
		{name: "WithTLSConfig(nil) adds nothing", addr: "h:1", opts: []grpc.DialOption{WithTLSConfig(nil)}},

		{name: "http with WithTLS", addr: "http://h:1", opts: []grpc.DialOption{WithTLS(ca, "", "")}, wantErr: []string{"use https://h:1", "conveyor.WithTLS"}},
		{name: "http with env", addr: "http://h:1/", env: env{TLSCAEnv: ca}, wantErr: []string{"use https://h:1", TLSCAEnv}},
		{name: "cert env without key", addr: "h:1", env: env{TLSCertEnv: cert}, wantErr: []string{TLSCertEnv, TLSKeyEnv, "only " + TLSCertEnv}},
		{name: "key env without cert", addr: "h:1", env: env{TLSKeyEnv: key}, wantErr: []string{TLSCertEnv, TLSKeyEnv, "only " + TLSKeyEnv}},
		{name: "WithTLS cert without key", addr: "h:1", opts: []grpc.DialOption{WithTLS(ca, cert, "")}, wantErr: []string{"certFile", "keyFile"}},
		{name: "missing CA from env", addr: "h:1", env: env{TLSCAEnv: missing}, wantErr: []string{missing, TLSCAEnv, "no such file"}},
		{name: "missing CA from WithTLS", addr: "https://h:1", opts: []grpc.DialOption{WithTLS(missing, "", "")}, wantErr: []string{missing, "WithTLS caFile"}},
		{name: "CA not PEM", addr: "h:1", env: env{TLSCAEnv: notPEM}, wantErr: []string{notPEM, TLSCAEnv, "no PEM certificate"}},
		{name: "missing key from env", addr: "h:1", env: env{TLSCertEnv: cert, TLSKeyEnv: missing}, wantErr: []string{missing, TLSKeyEnv}},
		{name: "key of another certificate", addr: "h:1", env: env{TLSCertEnv: cert, TLSKeyEnv: filepath.Join(dir, "server.key")},
			wantErr: []string{cert, TLSCertEnv, TLSKeyEnv, "do not load"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, name := range []string{TLSCAEnv, TLSCertEnv, TLSKeyEnv} {
				t.Setenv(name, tc.env[name])
			}
			r, err := newDialRecipe(tc.addr, tc.opts)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatal("no error")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (r.tls != nil) != tc.tls {
				t.Fatalf("TLS %v, want %v", r.tls != nil, tc.tls)
			}
			if r.tls == nil {
				return
			}
			if (r.tls.RootCAs != nil) != tc.roots || (len(r.tls.Certificates) == 1) != tc.client {
				t.Fatalf("roots %v, client certificate %v", r.tls.RootCAs != nil, len(r.tls.Certificates))
			}
			for _, opt := range r.opts {
				if _, ok := opt.(tlsOption); ok {
					t.Fatal("a TLS option is left for gRPC")
				}
			}
		})
	}
}

// The redial of a worker uses the TLS configuration loaded by NewConn, not
// the files or environment as they are later.
func TestRedialKeepsTheTLSConfiguration(t *testing.T) {
	dir := certDir(t)
	for _, name := range []string{TLSCAEnv, TLSCertEnv, TLSKeyEnv, AddressEnv, ServiceDispatch.EnvVar()} {
		t.Setenv(name, "")
	}
	t.Setenv(TLSCAEnv, filepath.Join(dir, "ca.pem"))
	conns, err := NewConns("127.0.0.1:1", WithEndpoint(ServiceDispatch, "127.0.0.1:2"))
	if err != nil {
		t.Fatal(err)
	}
	defer conns.Close()
	first, _ := recipes.Load(weakOf(conns.Conn(ServiceDispatch)))
	t.Setenv(TLSCAEnv, filepath.Join(dir, "missing.pem"))
	redial := redialer(conns)
	if redial == nil {
		t.Fatal("no redialer for NewConns")
	}
	conn, err := redial()
	if err != nil {
		t.Fatalf("redial: %v", err)
	}
	defer conn.Close()
	again, _ := recipes.Load(weakOf(conn))
	a, b := first.(dialRecipe), again.(dialRecipe)
	if a.tls == nil || a.tls != b.tls || b.target != "127.0.0.1:2" {
		t.Fatalf("redial recipe %+v, first %+v", b, a)
	}
}

func TestTLSHint(t *testing.T) {
	for msg, want := range map[string]string{
		`connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"`: TLSCAEnv,
		`connection error: desc = "error reading server preface: remote error: tls: certificate required"`:                                                        TLSCertEnv,
		`connection error: desc = "transport: authentication handshake failed: tls: first record does not look like a TLS handshake"`:                             "http://",
	} {
		err := tlsHint(status.Error(codes.Unavailable, msg), nil)
		if !strings.Contains(status.Convert(err).Message(), want) || status.Code(err) != codes.Unavailable {
			t.Errorf("hint for %q: %v", msg, err)
		}
		if again := tlsHint(err, nil); again.Error() != err.Error() {
			t.Errorf("hint added twice: %v", again)
		}
	}
	plain := status.Error(codes.Unavailable, "connection refused")
	if tlsHint(plain, nil) != plain {
		t.Error("hint on a refused connection")
	}
	if notFound := status.Error(codes.NotFound, "tls: whatever"); tlsHint(notFound, nil) != notFound {
		t.Error("hint on NOT_FOUND")
	}
	// A closed connection: what to check depends on how it was dialed.
	closed := status.Error(codes.Unavailable, "write tcp 127.0.0.1:1->127.0.0.1:2: write: broken pipe")
	if tlsHint(closed, nil) != closed {
		t.Error("hint on a closed connection of unknown dialing")
	}
	noCert, withCert, plaintext := &dialRecipe{tls: &tls.Config{}}, &dialRecipe{tls: &tls.Config{Certificates: make([]tls.Certificate, 1)}}, &dialRecipe{}
	if msg := tlsHint(closed, noCert).Error(); !strings.Contains(msg, TLSCertEnv) {
		t.Errorf("TLS without a client certificate, closed: %s", msg)
	}
	if tlsHint(closed, withCert) != closed {
		t.Error("hint on a closed connection with a client certificate")
	}
	if msg := tlsHint(closed, plaintext).Error(); !strings.Contains(msg, "https://") {
		t.Errorf("plaintext, closed: %s", msg)
	}
}

func weakOf(conn *grpc.ClientConn) weak.Pointer[grpc.ClientConn] { return weak.Make(conn) }
