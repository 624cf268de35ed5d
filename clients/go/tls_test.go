package conveyor_test

// TLS and mTLS against `conveyor dev --tls-cert --tls-key [--tls-client-ca]`,
// with certificates made for each test by scripts/gen-test-certs.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.conveyor.dev/conveyor"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// testCerts are the files scripts/gen-test-certs writes.
type testCerts struct {
	ca, otherCA       string
	server, serverKey string
	client, clientKey string
}

// genCerts writes a fresh CA and certificates into a temporary directory.
func genCerts(t *testing.T) testCerts {
	t.Helper()
	dir := t.TempDir()
	script, err := filepath.Abs(filepath.Join("..", "..", "scripts", "gen-test-certs"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(script, dir).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", script, dir, err, out)
	}
	f := func(name string) string { return filepath.Join(dir, name) }
	return testCerts{
		ca: f("ca.pem"), otherCA: f("other-ca.pem"),
		server: f("server.pem"), serverKey: f("server.key"),
		client: f("client.pem"), clientKey: f("client.key"),
	}
}

// clearTLSEnv unsets (for the test) every variable that would change where
// and how the SDK connects. Unset, not set empty: the servers the test
// starts inherit the environment, and `conveyor dev` refuses an empty
// CONVEYOR_TLS_CA (its --tls-ca).
func clearTLSEnv(t *testing.T) {
	names := []string{conveyor.TLSCAEnv, conveyor.TLSCertEnv, conveyor.TLSKeyEnv, conveyor.AddressEnv}
	for _, s := range conveyor.Services {
		names = append(names, s.EnvVar())
	}
	for _, name := range names {
		t.Setenv(name, "") // restores the value when the test ends
		_ = os.Unsetenv(name)
	}
}

// startTLSServer starts `conveyor dev` serving TLS with the test server
// certificate (requiring a client certificate signed by the test CA when
// mtls) and returns its host:port.
func startTLSServer(t *testing.T, c testCerts, mtls bool) string {
	t.Helper()
	args := []string{"--tls-cert", c.server, "--tls-key", c.serverKey}
	if mtls {
		args = append(args, "--tls-client-ca", c.ca)
	}
	return startServerOn(t, "", args...).addr
}

func dialTLS(t *testing.T, addr string, opts ...grpc.DialOption) *conveyor.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := conveyor.Dial(ctx, addr, opts...)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// addThroughWorker runs a worker on workerConn, submits add(2, 3) with c
// and checks the result.
func addThroughWorker(t *testing.T, c *conveyor.Client, workerConn grpc.ClientConnInterface) {
	t.Helper()
	queue := uniqueQueue(t)
	startWorkerOn(t, workerConn, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{"add": addHandler})
	ctx := testContext(t)
	id, err := c.Submit(ctx, "add", conveyor.Args(2, 3), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	var sum int
	if err := c.Result(ctx, id, 15*time.Second, &sum); err != nil {
		t.Fatalf("result: %v", err)
	}
	if sum != 5 {
		t.Fatalf("add(2, 3) = %d", sum)
	}
}

func newConn(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := conveyor.NewConn(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func Test_parity_tls_with_ca_option(t *testing.T) {
	clearTLSEnv(t)
	certs := genCerts(t)
	addr := "https://" + startTLSServer(t, certs, false)
	c := dialTLS(t, addr, conveyor.WithTLS(certs.ca, "", ""))
	addThroughWorker(t, c, newConn(t, addr, conveyor.WithTLS(certs.ca, "", "")))

	// Plaintext to a TLS server: the error says to use https://.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	plain := "http://" + strings.TrimPrefix(addr, "https://")
	if _, err := conveyor.Dial(ctx, plain); err == nil || !strings.Contains(err.Error(), "use an https:// address") {
		t.Fatalf("Dial %s (a TLS server): %v", plain, err)
	}

	// A failover list: each address is checked under its own host (the
	// first refuses connections).
	list := "https://127.0.0.1:1," + strings.TrimPrefix(addr, "https://")
	c = dialTLS(t, list, conveyor.WithTLS(certs.ca, "", ""))
	if _, err := c.Submit(testContext(t), "nothing", conveyor.WithQueue(uniqueQueue(t))); err != nil {
		t.Fatalf("submit through %s: %v", list, err)
	}

	// WithTLSConfig, as the caller built it.
	pem, err := os.ReadFile(certs.ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c = dialTLS(t, addr, conveyor.WithTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}))
	if _, err := c.Submit(testContext(t), "nothing", conveyor.WithQueue(uniqueQueue(t))); err != nil {
		t.Fatalf("submit with WithTLSConfig: %v", err)
	}
}

// Environment variables only: an address without a scheme and
// CONVEYOR_TLS_CA mean TLS; the dispatch service's own address (by host
// name, which the certificate lists) gets it too.
func TestTLSFromEnvironmentOnly(t *testing.T) {
	clearTLSEnv(t)
	certs := genCerts(t)
	hostPort := startTLSServer(t, certs, false)
	_, port, _ := strings.Cut(hostPort, ":")
	t.Setenv(conveyor.AddressEnv, hostPort)
	t.Setenv(conveyor.ServiceDispatch.EnvVar(), "localhost:"+port)
	t.Setenv(conveyor.TLSCAEnv, certs.ca)
	c := dialTLS(t, "")
	conns, err := conveyor.NewConns("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conns.Close() })
	addThroughWorker(t, c, conns)
}

// Trusting only a CA that did not sign the server's certificate fails, with
// an error that says so and what to set.
func TestTLSUntrustedServerIsRefused(t *testing.T) {
	clearTLSEnv(t)
	certs := genCerts(t)
	addr := "https://" + startTLSServer(t, certs, false)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := conveyor.Dial(ctx, addr, conveyor.WithTLS(certs.otherCA, "", ""))
	if err == nil {
		t.Fatal("Dial trusting only other-ca.pem succeeded")
	}
	for _, want := range []string{"unknown authority", conveyor.TLSCAEnv} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Dial error %q does not mention %q", err, want)
		}
	}
	// The same through a call on a connection that was not waited for.
	c := conveyor.NewClient(newConn(t, addr, conveyor.WithTLS(certs.otherCA, "", "")))
	c.SetCallRetry(conveyor.CallRetry{Attempts: 1})
	_, err = c.Submit(testContext(t), "add", conveyor.WithQueue(uniqueQueue(t)))
	if err == nil || !strings.Contains(err.Error(), "unknown authority") || !strings.Contains(err.Error(), conveyor.TLSCAEnv) {
		t.Fatalf("submit trusting only other-ca.pem: %v", err)
	}
}

// mTLS: without a client certificate the server refuses the connection;
// with the test client certificate (an option for the client, environment
// variables for the worker) tasks run.
func Test_parity_mtls(t *testing.T) {
	clearTLSEnv(t)
	certs := genCerts(t)
	addr := "https://" + startTLSServer(t, certs, true)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := conveyor.Dial(ctx, addr, conveyor.WithTLS(certs.ca, "", ""))
	if err == nil {
		t.Fatal("Dial without a client certificate succeeded")
	}
	if !strings.Contains(err.Error(), conveyor.TLSCertEnv) {
		t.Errorf("Dial error without a client certificate does not say to set %s: %v", conveyor.TLSCertEnv, err)
	}
	t.Logf("without a client certificate: %v", err)

	c := dialTLS(t, addr, conveyor.WithTLS(certs.ca, certs.client, certs.clientKey))
	t.Setenv(conveyor.TLSCAEnv, certs.ca)
	t.Setenv(conveyor.TLSCertEnv, certs.client)
	t.Setenv(conveyor.TLSKeyEnv, certs.clientKey)
	addThroughWorker(t, c, newConn(t, addr))
}

// TLS settings with an http:// address are a configuration error that says
// to use https://.
func TestTLSWithHTTPAddressIsAConfigurationError(t *testing.T) {
	clearTLSEnv(t)
	certs := genCerts(t)
	check := func(what string, err error, want ...string) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: no error", what)
		}
		for _, w := range append(want, "https://127.0.0.1:50051") {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", what, err, w)
			}
		}
	}
	_, err := conveyor.NewConn("http://127.0.0.1:50051", conveyor.WithTLS(certs.ca, "", ""))
	check("NewConn with WithTLS", err, "WithTLS")
	_, err = conveyor.Dial(context.Background(), "http://127.0.0.1:50051", conveyor.WithTLSConfig(&tls.Config{}))
	check("Dial with WithTLSConfig", err, "WithTLSConfig")
	_, err = conveyor.NewConns("https://127.0.0.1:50052", conveyor.WithTLS(certs.ca, "", ""),
		conveyor.WithEndpoint(conveyor.ServiceResults, "http://127.0.0.1:50051"))
	check("NewConns with an http:// endpoint", err, "results")
	t.Setenv(conveyor.TLSCAEnv, certs.ca)
	_, err = conveyor.NewConn("http://127.0.0.1:50051")
	check("NewConn with CONVEYOR_TLS_CA", err, conveyor.TLSCAEnv)
}

// A worker drained off a TLS dispatcher opens its next session on a new
// connection with the same TLS settings (its client certificate included),
// read when NewConns was called: changing the environment afterwards
// changes nothing.
func TestTLSDrainRedialKeepsTLSSettings(t *testing.T) {
	clearTLSEnv(t)
	certs := genCerts(t)
	pair, err := tls.LoadX509KeyPair(certs.server, certs.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(certs.ca)
	if err != nil {
		t.Fatal(err)
	}
	clients := x509.NewCertPool()
	clients.AppendCertsFromPEM(pem)
	d, addr := startFakeDispatcher(t, grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{pair}, ClientCAs: clients, ClientAuth: tls.RequireAndVerifyClientCert,
	})))
	t.Setenv(conveyor.TLSCAEnv, certs.ca)
	t.Setenv(conveyor.TLSCertEnv, certs.client)
	t.Setenv(conveyor.TLSKeyEnv, certs.clientKey)
	t.Setenv(conveyor.ServiceDispatch.EnvVar(), addr) // no scheme: TLS, from the variables
	conns, err := conveyor.NewConns("https://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conns.Close() })
	for _, name := range []string{conveyor.TLSCAEnv, conveyor.TLSCertEnv, conveyor.TLSKeyEnv} {
		t.Setenv(name, filepath.Join(t.TempDir(), "missing.pem"))
	}
	release := make(chan struct{})
	startFakeWorkerOn(t, conns, map[string]conveyor.Handler{"wait": waitHandler(release)})
	var peers []string
	for i := range 2 {
		s := d.accept(t)
		s.welcome(t)
		p, _ := peer.FromContext(s.stream.Context())
		info, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok || len(info.State.PeerCertificates) == 0 || info.State.PeerCertificates[0].Subject.CommonName != "test-client" {
			t.Fatalf("session %d: not TLS with the test client certificate (%v)", i+1, p.AuthInfo)
		}
		peers = append(peers, s.peer)
		if i == 0 {
			drainForRebalance(t, s, release, "t1", 1)
		}
	}
	if peers[0] == peers[1] {
		t.Fatalf("the session after the drain came on the same connection (%s)", peers[0])
	}
}
