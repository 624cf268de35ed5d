package conveyor

import (
	"context"
	"crypto/tls"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
	"weak"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
)

// NewConn returns a *grpc.ClientConn to addr without connecting yet (gRPC
// connects on first use and reconnects by itself).
//
// addr is "host:port" or "http://host:port" (plaintext HTTP/2, as
// `conveyor dev` serves), "https://host:port" (TLS), or any gRPC target
// ("dns:///host:port", "unix:///path"), plaintext. With [WithTLS] or
// [WithTLSConfig], or when CONVEYOR_TLS_CA, CONVEYOR_TLS_CERT or
// CONVEYOR_TLS_KEY is set, an address without the http:// or https://
// scheme is dialed with TLS too, and an http:// one is an error. TLS trusts
// the system roots unless a CA bundle is given, and presents a client
// certificate when one is given (mTLS).
// Several servers are given comma-separated, "http://10.0.0.1:50051,10.0.0.2:50051"
// (one scheme, first): the connection uses the first that answers and fails
// over to the next when it dies, as it does across the addresses of a DNS
// name ("dns:///conveyor.internal:50051"). The connection backs off from
// 100 ms to 5 s between attempts. Calls send and receive messages of up
// to 64 MiB (grpc-go's default receive limit, 4 MiB, is below the largest
// task a server returns and the largest worker frame it sends). opts come last, so they may replace the
// credentials or add interceptors; [WithToken] adds a bearer token, and
// [WithNamespace] sets the namespace of the clients and workers that use
// the connection.
//
// A [Worker] given a connection made here (or by [NewConns]) opens its
// sessions after a Drain on new connections it dials the same way, with
// the same TLS configuration (see [NewWorker]); the caller still closes
// this one.
func NewConn(addr string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	r, err := newDialRecipe(addr, opts)
	if err != nil {
		return nil, err
	}
	return r.dial()
}

// dialRecipe is how [NewConn] made a connection, so that a worker can open
// another one to the same address with the same options and the same TLS
// configuration (files and environment are read once, by NewConn).
type dialRecipe struct {
	addr   string
	target string      // gRPC target, or the comma-separated list
	tls    *tls.Config // nil for plaintext
	opts   []grpc.DialOption
	// namespace is the connection's WithNamespace, "" when none.
	namespace string
}

// newDialRecipe reads addr, the TLS options and environment variables, and
// loads the TLS files.
func newDialRecipe(addr string, opts []grpc.DialOption) (dialRecipe, error) {
	namespace, opts := takeNamespaceOption(opts)
	tlsOpt, rest := takeTLSOptions(opts)
	target, scheme := parseAddr(addr)
	if target == "" {
		return dialRecipe{}, fmt.Errorf("conveyor: empty address: pass host:port, http://host:port, https://host:port or several comma-separated")
	}
	settings, err := readTLSSettings(tlsOpt)
	if err != nil {
		return dialRecipe{}, err
	}
	r := dialRecipe{addr: addr, target: target, opts: slices.Clone(rest), namespace: namespace}
	switch {
	case scheme == "http" && settings.requested:
		return dialRecipe{}, fmt.Errorf("conveyor: address %q is plaintext (http://) but TLS is configured (%s): use https://%s to connect with TLS",
			strings.TrimSpace(addr), strings.Join(settings.sources, ", "), target)
	case scheme == "https" || (scheme == "" && settings.requested):
		if r.tls, err = settings.build(); err != nil {
			return dialRecipe{}, err
		}
	}
	return r, nil
}

// dial opens a connection as the recipe says.
func (r dialRecipe) dial() (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if r.tls != nil {
		creds = credentials.NewTLS(r.tls) // takes a copy
	}
	base := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageBytes), grpc.MaxCallSendMsgSize(maxMessageBytes)),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 2,
				Jitter:     0.2,
				MaxDelay:   5 * time.Second,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	target := r.target
	if strings.Contains(target, ",") {
		static, err := staticResolver(target, r.tls != nil)
		if err != nil {
			return nil, fmt.Errorf("conveyor: address %q: %w", r.addr, err)
		}
		base = append(base, grpc.WithResolvers(static))
		target = static.Scheme() + ":///conveyor"
	}
	conn, err := grpc.NewClient(target, append(base, r.opts...)...)
	if err != nil {
		return nil, fmt.Errorf("conveyor: address %q: %w (pass host:port, http://host:port, https://host:port or several comma-separated)", r.addr, err)
	}
	rememberRecipe(conn, r)
	return conn, nil
}

// recipes holds the recipe of every live connection NewConn made, keyed by
// a weak pointer so that it keeps no connection alive; an entry goes when
// its connection is garbage collected.
var recipes sync.Map // weak.Pointer[grpc.ClientConn] -> dialRecipe

func rememberRecipe(conn *grpc.ClientConn, r dialRecipe) {
	key := weak.Make(conn)
	recipes.Store(key, r)
	runtime.AddCleanup(conn, func(k weak.Pointer[grpc.ClientConn]) { recipes.Delete(k) }, key)
}

// redialer returns a function that opens a new connection to where conn's
// worker stream goes, dialed as conn was: for a connection from [NewConn],
// or a [*Conns] (its dispatch service's). nil for any other connection,
// which the SDK cannot reproduce (credentials, interceptors, resolver).
func redialer(conn grpc.ClientConnInterface) func() (*grpc.ClientConn, error) {
	if m, ok := conn.(messageLimits); ok {
		conn = m.ClientConnInterface
	}
	var cc *grpc.ClientConn
	switch c := conn.(type) {
	case *grpc.ClientConn:
		cc = c
	case *Conns:
		cc = c.Conn(ServiceDispatch)
	}
	if cc == nil {
		return nil
	}
	v, ok := recipes.Load(weak.Make(cc))
	if !ok {
		return nil
	}
	return v.(dialRecipe).dial
}

// maxMessageBytes is the send and receive limit of every call and worker
// stream of this SDK: above the largest message a server sends (a task with
// 4 MiB of arguments, a worker frame of Welcome.max_frame_bytes).
const maxMessageBytes = 64 << 20

// messageLimits sets maxMessageBytes on every call made through a
// connection, including one the caller dialed without [NewConn], and sends
// the trace context of the caller's span (if any) with each unary call.
type messageLimits struct{ grpc.ClientConnInterface }

var messageLimitOptions = []grpc.CallOption{grpc.MaxCallRecvMsgSize(maxMessageBytes), grpc.MaxCallSendMsgSize(maxMessageBytes)}

func withMessageLimits(conn grpc.ClientConnInterface) grpc.ClientConnInterface {
	if conn == nil {
		return nil
	}
	if _, ok := conn.(messageLimits); ok {
		return conn
	}
	return messageLimits{conn}
}

// Errors of calls through it that say UNIMPLEMENTED (a process that does
// not serve the call's role) also name the address called and how to send
// that service's calls elsewhere (see [WithEndpoint]).
func (c messageLimits) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	err := c.ClientConnInterface.Invoke(withTraceMetadata(ctx), method, args, reply, append(slices.Clip(messageLimitOptions), opts...)...)
	if status.Code(err) == codes.Unavailable {
		err = tlsHint(err, recipeOf(c.ClientConnInterface, method))
	}
	if status.Code(err) == codes.Unimplemented {
		s, _ := serviceOf(method)
		err = withEndpointHint(err, method, endpointAddress(c.ClientConnInterface, s))
	}
	return err
}

func (c messageLimits) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	stream, err := c.ClientConnInterface.NewStream(ctx, desc, method, append(slices.Clip(messageLimitOptions), opts...)...)
	if err != nil {
		err = tlsHint(err, recipeOf(c.ClientConnInterface, method))
		if status.Code(err) == codes.Unimplemented {
			s, _ := serviceOf(method)
			err = withEndpointHint(err, method, endpointAddress(c.ClientConnInterface, s))
		}
		return nil, err
	}
	return hintStream{ClientStream: stream, conn: c.ClientConnInterface, method: method}, nil
}

// staticResolver resolves to a fixed list of "host:port" addresses, tried
// in order by gRPC's default pick_first policy: the first that connects is
// used until it fails, then the next.
//
// With TLS, each address is checked against the server's certificate under
// its own host name (the connection's target names no host).
func staticResolver(list string, tls bool) (*manual.Resolver, error) {
	var addrs []resolver.Address
	for _, a := range strings.Split(list, ",") {
		a = strings.TrimSuffix(strings.TrimSpace(a), "/")
		if a == "" {
			continue
		}
		if strings.Contains(a, "://") {
			return nil, fmt.Errorf("only the first of several addresses may carry a scheme (it applies to all), got %q", a)
		}
		ra := resolver.Address{Addr: a}
		if tls {
			ra.ServerName = a // its host is the name verified, and the :authority
		}
		addrs = append(addrs, ra)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("no address in the list")
	}
	r := manual.NewBuilderWithScheme("conveyor-static")
	r.InitialState(resolver.State{Addresses: addrs})
	return r, nil
}

// WithToken sends token as "authorization: Bearer <token>" on every call
// of the connection, which is what a server started with --auth-token
// requires. Pass it to [Dial] for a client or to [NewConn] for a worker:
//
//	c, err := conveyor.Dial(ctx, addr, conveyor.WithToken(os.Getenv("CONVEYOR_TOKEN")))
//	conn, err := conveyor.NewConn(addr, conveyor.WithToken(token))
//
// An empty token adds nothing, so a token read from the environment can be
// passed as it is. The token is sent over plaintext connections too (as
// `conveyor dev` serves); use an https:// address where the network is not
// trusted.
func WithToken(token string) grpc.DialOption {
	if token == "" {
		return grpc.EmptyDialOption{}
	}
	return grpc.WithPerRPCCredentials(bearerToken(token))
}

type bearerToken string

func (t bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (bearerToken) RequireTransportSecurity() bool { return false }

// parseAddr splits addr into the gRPC target and its scheme: "http",
// "https", or "" for none (host:port, or a gRPC target such as dns:///).
func parseAddr(addr string) (target, scheme string) {
	addr = strings.TrimSpace(addr)
	for _, sch := range []string{"http", "https"} {
		if rest, ok := strings.CutPrefix(addr, sch+"://"); ok {
			return strings.TrimSuffix(rest, "/"), sch
		}
	}
	return addr, ""
}

// Dial connects to addr (see [NewConn]) and waits until the connection is
// ready, failing fast with UNAVAILABLE when nothing answers, or when ctx
// ends. The returned client owns the connection: [Client.Close] closes it.
//
// An empty addr means CONVEYOR_ADDR, then [DefaultAddress]. Each call goes
// to the address of the service that defines it: addr, unless
// [WithEndpoint] or the service's environment variable
// (CONVEYOR_SUBMISSION_ADDR, CONVEYOR_RESULTS_ADDR, CONVEYOR_DISPATCH_ADDR,
// CONVEYOR_SCHEDULING_ADDR) gives it another (see [NewConns]); Dial waits
// for every distinct address.
func Dial(ctx context.Context, addr string, opts ...grpc.DialOption) (*Client, error) {
	conns, err := NewConns(addr, opts...)
	if err != nil {
		return nil, err
	}
	waited := map[*grpc.ClientConn]bool{}
	for _, s := range Services {
		conn := conns.Conn(s)
		if waited[conn] {
			continue
		}
		waited[conn] = true
		if err := waitReady(ctx, conn, conns.Address(s)); err != nil {
			_ = conns.Close()
			return nil, err
		}
	}
	c := NewClient(conns)
	c.owned = conns
	return c, nil
}

func waitReady(ctx context.Context, conn *grpc.ClientConn, addr string) error {
	conn.Connect()
	for {
		state := conn.GetState()
		switch state {
		case connectivity.Ready:
			return nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			err := status.Errorf(codes.Unavailable, "cannot connect to %s (%s)%s", addr, state, connectionError(ctx, conn, state))
			return newRPCError("Dial", tlsHint(err, recipeOf(conn, "")))
		}
		if !conn.WaitForStateChange(ctx, state) {
			return newRPCError("Dial", ctx.Err())
		}
	}
}

// connectionError is ": " and why conn failed to connect (a refused
// connection, a TLS handshake error), or "" when it cannot tell. gRPC
// keeps the reason in the failing picker, so a call that does not wait
// for the connection returns it at once.
func connectionError(ctx context.Context, conn *grpc.ClientConn, state connectivity.State) string {
	if state != connectivity.TransientFailure {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	err := conn.Invoke(ctx, "/grpc.health.v1.Health/Check", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
	st, _ := status.FromError(err)
	if err == nil || st.Code() != codes.Unavailable || st.Message() == "" {
		return ""
	}
	return ": " + st.Message()
}
