package conveyor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Service names one of Conveyor's four gRPC services, each served by the
// `conveyor serve` role of the same name. [WithEndpoint] takes one.
type Service string

// The services, by the names every SDK gives them.
const (
	// ServiceSubmission is conveyor.v1.SubmissionService: SubmitTask,
	// SubmitTasks, CancelTask, ReplayTask, SubmitWorkflow, CancelWorkflow.
	ServiceSubmission Service = "submission"
	// ServiceResults is conveyor.v1.ResultsService: GetTask, WaitTask,
	// WatchTask, ForgetTask, ListDeadLetters, the workflow reads.
	ServiceResults Service = "results"
	// ServiceDispatch is conveyor.v1.DispatchService: the workers' Connect
	// stream, ListWorkers, PauseQueue, ResumeQueue.
	ServiceDispatch Service = "dispatch"
	// ServiceScheduling is conveyor.v1.SchedulingService: the schedule calls.
	ServiceScheduling Service = "scheduling"
)

// Services lists the services in a fixed order.
var Services = []Service{ServiceSubmission, ServiceResults, ServiceDispatch, ServiceScheduling}

// DefaultAddress is the address [Dial] and [NewConns] use when they are given
// none and CONVEYOR_ADDR is unset: a local `conveyor dev`.
const DefaultAddress = "http://127.0.0.1:50051"

// AddressEnv names the environment variable [Dial] and [NewConns] read when
// their address is empty.
const AddressEnv = "CONVEYOR_ADDR"

// EnvVar is the environment variable that sets the service's address:
// CONVEYOR_SUBMISSION_ADDR, CONVEYOR_RESULTS_ADDR, CONVEYOR_DISPATCH_ADDR or
// CONVEYOR_SCHEDULING_ADDR.
func (s Service) EnvVar() string { return "CONVEYOR_" + strings.ToUpper(string(s)) + "_ADDR" }

// grpcName is the service's full gRPC name.
func (s Service) grpcName() string {
	return "conveyor.v1." + strings.ToUpper(string(s[:1])) + string(s[1:]) + "Service"
}

func (s Service) valid() bool {
	for _, known := range Services {
		if s == known {
			return true
		}
	}
	return false
}

// serviceOf is the service of a full method name such as
// "/conveyor.v1.ResultsService/GetTask"; false for other services.
func serviceOf(method string) (Service, bool) {
	name, _, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	for _, s := range Services {
		if name == s.grpcName() {
			return s, true
		}
	}
	return "", false
}

// WithEndpoint sends the calls of service to addr (one address or a
// comma-separated failover list, as [NewConn] reads them) instead of the
// address given to [Dial] or [NewConns], for deployments that run the roles
// as separate processes without forwarding (`conveyor serve --peer`):
//
//	c, err := conveyor.Dial(ctx, "http://submission:50051",
//		conveyor.WithEndpoint(conveyor.ServiceResults, "http://results:50051"),
//		conveyor.WithEndpoint(conveyor.ServiceDispatch, "http://dispatch:50051"),
//		conveyor.WithEndpoint(conveyor.ServiceScheduling, "http://scheduling:50051"))
//
// A service's address is the first found of: its WithEndpoint (the last one
// given), its environment variable ([Service.EnvVar], e.g.
// CONVEYOR_RESULTS_ADDR), the address argument, CONVEYOR_ADDR, and
// [DefaultAddress]. [NewConn], which opens one connection for every
// service, ignores this option.
func WithEndpoint(service Service, addr string) grpc.DialOption {
	return endpointOption{service: service, addr: addr}
}

// endpointOption is a DialOption that gRPC ignores; NewConns reads it.
type endpointOption struct {
	grpc.EmptyDialOption
	service Service
	addr    string
}

// resolveEndpoints returns every service's address and the options left for
// gRPC once the WithEndpoint ones are taken out.
func resolveEndpoints(addr string, opts []grpc.DialOption) (map[Service]string, []grpc.DialOption, error) {
	explicit := map[Service]string{}
	rest := make([]grpc.DialOption, 0, len(opts))
	for _, opt := range opts {
		e, ok := opt.(endpointOption)
		if !ok {
			rest = append(rest, opt)
			continue
		}
		if !e.service.valid() {
			return nil, nil, fmt.Errorf("conveyor: WithEndpoint: unknown service %q: use conveyor.ServiceSubmission, ServiceResults, ServiceDispatch or ServiceScheduling (%s)", e.service, serviceList())
		}
		if strings.TrimSpace(e.addr) == "" {
			return nil, nil, fmt.Errorf("conveyor: WithEndpoint(%s): empty address", e.service)
		}
		explicit[e.service] = strings.TrimSpace(e.addr)
	}
	general := strings.TrimSpace(addr)
	if general == "" {
		general = strings.TrimSpace(os.Getenv(AddressEnv))
	}
	if general == "" {
		general = DefaultAddress
	}
	resolved := make(map[Service]string, len(Services))
	for _, s := range Services {
		switch {
		case explicit[s] != "":
			resolved[s] = explicit[s]
		case strings.TrimSpace(os.Getenv(s.EnvVar())) != "":
			resolved[s] = strings.TrimSpace(os.Getenv(s.EnvVar()))
		default:
			resolved[s] = general
		}
	}
	return resolved, rest, nil
}

func serviceList() string {
	names := make([]string, len(Services))
	for i, s := range Services {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}

// Conns holds a connection per service and sends each call to the
// connection of the service that defines it. Use it where a
// [grpc.ClientConnInterface] goes: [NewClient] for a client, [NewWorker]
// for a worker (whose stream goes to the dispatch service's address).
// Services given the same address share one connection.
type Conns struct {
	conns map[Service]*grpc.ClientConn
	addrs map[Service]string
}

// NewConns opens (lazily, as [NewConn] does) a connection for each distinct
// address of the four services: addr for every service, unless
// [WithEndpoint] or a service's environment variable (CONVEYOR_SUBMISSION_ADDR,
// CONVEYOR_RESULTS_ADDR, CONVEYOR_DISPATCH_ADDR, CONVEYOR_SCHEDULING_ADDR)
// says otherwise; an empty addr means CONVEYOR_ADDR, then [DefaultAddress].
// The other opts apply to every connection.
//
//	conns, err := conveyor.NewConns(addr, conveyor.WithEndpoint(conveyor.ServiceDispatch, "http://dispatch:50051"))
//	w := conveyor.NewWorker(conns, conveyor.WorkerOptions{Queues: []string{"default"}})
func NewConns(addr string, opts ...grpc.DialOption) (*Conns, error) {
	endpoints, dialOpts, err := resolveEndpoints(addr, opts)
	if err != nil {
		return nil, err
	}
	c := &Conns{conns: map[Service]*grpc.ClientConn{}, addrs: endpoints}
	byAddr := map[string]*grpc.ClientConn{}
	for _, s := range Services {
		a := endpoints[s]
		conn, ok := byAddr[a]
		if !ok {
			conn, err = NewConn(a, dialOpts...)
			if err != nil {
				_ = c.Close()
				return nil, fmt.Errorf("conveyor: the %s service's endpoint (%s): %w", s, endpointSource(s, a, opts), err)
			}
			byAddr[a] = conn
		}
		c.conns[s] = conn
	}
	return c, nil
}

// endpointSource says where a service's address came from, for errors.
func endpointSource(s Service, addr string, opts []grpc.DialOption) string {
	for i := len(opts) - 1; i >= 0; i-- {
		if e, ok := opts[i].(endpointOption); ok && e.service == s {
			return fmt.Sprintf("WithEndpoint(%s, %q)", s, addr)
		}
	}
	if strings.TrimSpace(os.Getenv(s.EnvVar())) != "" {
		return fmt.Sprintf("%s=%q", s.EnvVar(), addr)
	}
	return fmt.Sprintf("%q", addr)
}

// Conn is the connection of a service.
func (c *Conns) Conn(s Service) *grpc.ClientConn { return c.conns[s] }

// Address is the address a service's calls go to, as it was given.
func (c *Conns) Address(s Service) string { return c.addrs[s] }

// Close closes every connection.
func (c *Conns) Close() error {
	var errs []error
	seen := map[*grpc.ClientConn]bool{}
	for _, s := range Services {
		conn := c.conns[s]
		if conn == nil || seen[conn] {
			continue
		}
		seen[conn] = true
		errs = append(errs, conn.Close())
	}
	return errors.Join(errs...)
}

// route is the connection for a method: its service's, or the submission
// service's for a method of another service (health checks, reflection).
func (c *Conns) route(method string) *grpc.ClientConn {
	if s, ok := serviceOf(method); ok {
		return c.conns[s]
	}
	return c.conns[ServiceSubmission]
}

// Invoke sends a unary call to its service's connection.
func (c *Conns) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return c.route(method).Invoke(ctx, method, args, reply, opts...)
}

// NewStream opens a stream on its service's connection.
func (c *Conns) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return c.route(method).NewStream(ctx, desc, method, opts...)
}

// endpointAddress is the address of a method's service on conn, for the
// UNIMPLEMENTED hint; "" when unknown.
func endpointAddress(conn grpc.ClientConnInterface, s Service) string {
	switch c := conn.(type) {
	case *Conns:
		return c.Address(s)
	case *grpc.ClientConn:
		if target := c.Target(); !strings.HasPrefix(target, "conveyor-static:") {
			return target
		}
	}
	return ""
}

// withEndpointHint adds to an UNIMPLEMENTED status of a call of method (a
// process that does not serve the method's role) the address called and how
// to send that service's calls elsewhere. Other errors are returned as they
// are; the status keeps its code and details.
func withEndpointHint(err error, method, addr string) error {
	if err == nil || status.Code(err) != codes.Unimplemented {
		return err
	}
	s, ok := serviceOf(method)
	if !ok {
		return err
	}
	st, _ := status.FromError(err)
	p := st.Proto()
	p.Message += endpointHint(s, addr)
	return status.FromProto(p).Err()
}

// endpointHint is the text withEndpointHint adds.
func endpointHint(s Service, addr string) string {
	called := ""
	if addr != "" {
		called = "called " + addr + "; "
	}
	constant := "conveyor.Service" + strings.ToUpper(string(s[:1])) + string(s[1:])
	return fmt.Sprintf(" (%sset %s or conveyor.WithEndpoint(%s, …) to reach the %s role elsewhere)", called, s.EnvVar(), constant, s)
}

// hintStream adds the endpoint hint to the status a stream ends with.
type hintStream struct {
	grpc.ClientStream
	conn   grpc.ClientConnInterface
	method string
}

func (s hintStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if status.Code(err) == codes.Unavailable {
		err = tlsHint(err, recipeOf(s.conn, s.method))
	}
	if status.Code(err) != codes.Unimplemented {
		return err
	}
	svc, _ := serviceOf(s.method)
	return withEndpointHint(err, s.method, endpointAddress(s.conn, svc))
}
