package conveyor

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"weak"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The environment variables that configure TLS when no [WithTLS] or
// [WithTLSConfig] option says otherwise (an option wins over them).
const (
	// TLSCAEnv is the path of a PEM file of the CA certificates to trust
	// instead of the system roots.
	TLSCAEnv = "CONVEYOR_TLS_CA"
	// TLSCertEnv is the path of the PEM client certificate presented to a
	// server that requires one (mTLS); it needs TLSKeyEnv.
	TLSCertEnv = "CONVEYOR_TLS_CERT"
	// TLSKeyEnv is the path of the PEM private key of TLSCertEnv's
	// certificate; it needs TLSCertEnv.
	TLSKeyEnv = "CONVEYOR_TLS_KEY"
)

// WithTLS connects with TLS, trusting the CA certificates of the PEM file
// caFile, and presents the client certificate certFile with its private key
// keyFile to a server that requires one (mTLS, `conveyor serve
// --tls-client-ca`). Pass it to [Dial], [NewConns] or [NewConn]:
//
//	c, err := conveyor.Dial(ctx, "https://conveyor.internal:50051",
//		conveyor.WithTLS("ca.pem", "client.pem", "client.key"))
//
// An empty caFile means CONVEYOR_TLS_CA, else the system roots; empty
// certFile and keyFile mean CONVEYOR_TLS_CERT and CONVEYOR_TLS_KEY, else no
// client certificate. One of certFile and keyFile without the other is an
// error. The files are read when the connection is made (NewConn, NewConns
// or Dial returns an error naming a file that cannot be read).
//
// With it, an address without a scheme ("host:port") is dialed with TLS;
// an "http://" address is an error (use "https://"). It applies to every
// connection made with the options, those of [WithEndpoint] and the service
// environment variables included, and to the ones a [Worker] opens after a
// Drain. The last of WithTLS and [WithTLSConfig] given wins.
func WithTLS(caFile, certFile, keyFile string) grpc.DialOption {
	return tlsOption{caFile: strings.TrimSpace(caFile), certFile: strings.TrimSpace(certFile), keyFile: strings.TrimSpace(keyFile)}
}

// WithTLSConfig connects with TLS configured by config, as it is (a copy is
// taken): CONVEYOR_TLS_CA, CONVEYOR_TLS_CERT and CONVEYOR_TLS_KEY are then
// not read. A nil config adds nothing. Otherwise as [WithTLS]; the server
// name checked is the address's host unless config.ServerName is set.
func WithTLSConfig(config *tls.Config) grpc.DialOption {
	if config == nil {
		return grpc.EmptyDialOption{}
	}
	return tlsOption{config: config.Clone()}
}

// tlsOption is a DialOption that gRPC ignores; NewConn reads it.
type tlsOption struct {
	grpc.EmptyDialOption
	caFile, certFile, keyFile string
	config                    *tls.Config
}

// takeTLSOptions returns the last TLS option of opts (nil when none) and
// the options left for gRPC.
func takeTLSOptions(opts []grpc.DialOption) (*tlsOption, []grpc.DialOption) {
	var last *tlsOption
	rest := make([]grpc.DialOption, 0, len(opts))
	for _, opt := range opts {
		if t, ok := opt.(tlsOption); ok {
			last = &t
			continue
		}
		rest = append(rest, opt)
	}
	return last, rest
}

// tlsSetting is one TLS file setting and where it came from, for errors.
type tlsSetting struct {
	path   string
	source string // "CONVEYOR_TLS_CA", "WithTLS caFile", ...
}

// tlsSettings are the TLS settings of a connection, from its options and
// the environment.
type tlsSettings struct {
	requested bool        // an option or environment variable asks for TLS
	config    *tls.Config // from WithTLSConfig
	ca        tlsSetting
	cert, key tlsSetting
	sources   []string // what asked for TLS, for the http:// error
}

func readTLSSettings(opt *tlsOption) (tlsSettings, error) {
	var s tlsSettings
	if opt != nil && opt.config != nil {
		return tlsSettings{requested: true, config: opt.config, sources: []string{"conveyor.WithTLSConfig"}}, nil
	}
	env := func(name string) tlsSetting {
		if v := strings.TrimSpace(os.Getenv(name)); v != "" {
			s.sources = append(s.sources, name)
			return tlsSetting{path: v, source: name}
		}
		return tlsSetting{}
	}
	if opt != nil {
		s.requested = true
		s.sources = append(s.sources, "conveyor.WithTLS")
	}
	if opt != nil && opt.caFile != "" {
		s.ca = tlsSetting{path: opt.caFile, source: "WithTLS caFile"}
	} else {
		s.ca = env(TLSCAEnv)
	}
	if opt != nil && (opt.certFile != "" || opt.keyFile != "") {
		s.cert = tlsSetting{path: opt.certFile, source: "WithTLS certFile"}
		s.key = tlsSetting{path: opt.keyFile, source: "WithTLS keyFile"}
		if s.cert.path == "" || s.key.path == "" {
			return s, fmt.Errorf("conveyor: WithTLS: a client certificate needs both certFile and keyFile (got certFile %q, keyFile %q)", opt.certFile, opt.keyFile)
		}
	} else {
		s.cert, s.key = env(TLSCertEnv), env(TLSKeyEnv)
		if (s.cert.path == "") != (s.key.path == "") {
			only := TLSCertEnv
			if s.cert.path == "" {
				only = TLSKeyEnv
			}
			return s, fmt.Errorf("conveyor: a client certificate needs both %s and %s (the paths of the PEM certificate and of its private key); only %s is set", TLSCertEnv, TLSKeyEnv, only)
		}
	}
	if len(s.sources) > 0 {
		s.requested = true
	}
	return s, nil
}

// build loads the files and returns the client's TLS configuration.
func (s tlsSettings) build() (*tls.Config, error) {
	if s.config != nil {
		return s.config.Clone(), nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if s.ca.path != "" {
		pem, err := os.ReadFile(s.ca.path)
		if err != nil {
			return nil, fileError("CA bundle", s.ca, err, "a PEM file of the CA certificates to trust")
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("conveyor: the TLS CA bundle %q (%s) holds no PEM certificate: give the path of a PEM file of the CA certificates to trust", s.ca.path, s.ca.source)
		}
		cfg.RootCAs = pool
	}
	if s.cert.path != "" {
		for _, f := range []struct {
			what string
			set  tlsSetting
		}{{"client certificate", s.cert}, {"client key", s.key}} {
			if _, err := os.Stat(f.set.path); err != nil {
				return nil, fileError(f.what, f.set, err, "a PEM file")
			}
		}
		pair, err := tls.LoadX509KeyPair(s.cert.path, s.key.path)
		if err != nil {
			return nil, fmt.Errorf("conveyor: the TLS client certificate %q (%s) and key %q (%s) do not load: %w: give a PEM certificate and its PEM private key", s.cert.path, s.cert.source, s.key.path, s.key.source, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func fileError(what string, set tlsSetting, err error, want string) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err // the path is named already
	}
	fix := "set " + set.source
	if strings.HasPrefix(set.source, "WithTLS") {
		fix = "pass " + set.source
	}
	return fmt.Errorf("conveyor: cannot read the TLS %s %q (%s): %w: %s to %s", what, set.path, set.source, err, fix, want)
}

// tlsHint adds to an UNAVAILABLE error whose cause is a TLS handshake (or
// TLS on one side only) what to do about it; other errors are returned as
// they are. r is the recipe of the connection, nil when unknown.
func tlsHint(err error, r *dialRecipe) error {
	if status.Code(err) != codes.Unavailable {
		return err
	}
	st, _ := status.FromError(err)
	msg := st.Message()
	mtlsHint := "pass conveyor.WithTLS(caFile, certFile, keyFile) or set " + TLSCertEnv + " and " + TLSKeyEnv
	// The server refuses a missing client certificate with an alert, which
	// the client sees only if it reads before writing on the closed socket.
	closed := strings.Contains(msg, "broken pipe") || strings.Contains(msg, "connection reset by peer") ||
		strings.Contains(msg, "error reading server preface: EOF") || strings.Contains(msg, "error reading server preface: unexpected EOF")
	hint := ""
	switch {
	case strings.Contains(msg, "certificate signed by unknown authority"):
		hint = "the server's certificate is not signed by a CA this client trusts: pass conveyor.WithTLS(caFile, …) or set " + TLSCAEnv + " to the PEM file of the CA that signed it"
	case strings.Contains(msg, "x509: certificate is valid for"):
		hint = "the server's certificate does not name the host of the address: connect to a name it lists, or set ServerName with conveyor.WithTLSConfig"
	case strings.Contains(msg, "certificate required"):
		hint = "the server requires a client certificate (mTLS): " + mtlsHint
	case strings.Contains(msg, "tls: bad certificate"), strings.Contains(msg, "tls: unknown certificate authority"):
		hint = "the server does not accept the client certificate: give one signed by the CA of its --tls-client-ca with conveyor.WithTLS or " + TLSCertEnv + " and " + TLSKeyEnv
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		hint = "the server does not speak TLS: use an http:// address for a plaintext server"
	case strings.Contains(msg, "tls: "), strings.Contains(msg, "x509: "):
		hint = "TLS handshake failed: check conveyor.WithTLS or " + TLSCAEnv + ", " + TLSCertEnv + " and " + TLSKeyEnv
	case closed && r != nil && r.tls != nil && len(r.tls.Certificates) == 0 && r.tls.GetClientCertificate == nil:
		hint = "the server closed the TLS connection; if it requires a client certificate (mTLS), " + mtlsHint
	case closed && r != nil && r.tls == nil:
		hint = "the server closed the connection; if it serves TLS, use an https:// address"
	default:
		return err
	}
	if strings.Contains(msg, hint) {
		return err // added already
	}
	p := st.Proto()
	p.Message += " (" + hint + ")"
	return status.FromProto(p).Err()
}

// recipeOf is the recipe of the connection a call of method goes on
// through conn, nil when the SDK did not make it.
func recipeOf(conn grpc.ClientConnInterface, method string) *dialRecipe {
	var cc *grpc.ClientConn
	switch c := conn.(type) {
	case *grpc.ClientConn:
		cc = c
	case *Conns:
		cc = c.route(method)
	}
	if cc == nil {
		return nil
	}
	if v, ok := recipes.Load(weak.Make(cc)); ok {
		r := v.(dialRecipe)
		return &r
	}
	return nil
}
