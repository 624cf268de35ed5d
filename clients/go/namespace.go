package conveyor

import (
	"os"

	"google.golang.org/grpc"
)

// NamespaceEnv names the environment variable that gives the namespace of
// clients and workers not given one in code ([WithNamespace],
// [WorkerOptions].Namespace).
const NamespaceEnv = "CONVEYOR_NAMESPACE"

// WithNamespace makes the clients and workers of a connection act in
// namespace ns: every request they send carries it (the worker's Hello
// included), so they see, and are seen by, that namespace only. Tasks,
// queues, schedules, idempotency keys and workers of one namespace are
// invisible from the others: a worker never runs another namespace's
// tasks, even with the same queue and task names, and reading another
// namespace's task id gives NOT_FOUND. Pass it to [Dial] (a client), or
// to [NewConn] or [NewConns] (a worker, or [NewClient]):
//
//	c, err := conveyor.Dial(ctx, addr, conveyor.WithToken(token), conveyor.WithNamespace("billing"))
//	conn, err := conveyor.NewConn(addr, conveyor.WithToken(token), conveyor.WithNamespace("billing"))
//
// An empty ns (and no option at all) means the environment variable
// CONVEYOR_NAMESPACE ([NamespaceEnv]), and when that is unset too the
// namespace "default" (sent as ""); "default" names it explicitly. Names
// are 1 to 100 characters of [A-Za-z0-9_.-]; the server rejects others with
// INVALID_ARGUMENT. Of several WithNamespace options the last one counts.
// [Client.WithNamespace] gives a client of another namespace on the same
// connections, and [WorkerOptions].Namespace sets a worker's.
//
// On a server with an auth file, each principal has roles per namespace:
// a call in a namespace where its principal lacks the permission fails
// with PERMISSION_DENIED, matching [ErrPermissionDenied].
func WithNamespace(ns string) grpc.DialOption {
	return namespaceOption{ns: ns}
}

// namespaceOption is a DialOption that gRPC ignores; NewConn records it in
// the connection's recipe, where clients and workers find it.
type namespaceOption struct {
	grpc.EmptyDialOption
	ns string
}

// takeNamespaceOption returns the namespace of the last WithNamespace
// option of opts ("" when none) and the options left for gRPC.
func takeNamespaceOption(opts []grpc.DialOption) (string, []grpc.DialOption) {
	ns := ""
	rest := make([]grpc.DialOption, 0, len(opts))
	for _, opt := range opts {
		if o, ok := opt.(namespaceOption); ok {
			ns = o.ns
			continue
		}
		rest = append(rest, opt)
	}
	return ns, rest
}

// resolveNamespace is ns, else CONVEYOR_NAMESPACE, else "" (the default
// namespace).
func resolveNamespace(ns string) string {
	if ns != "" {
		return ns
	}
	return os.Getenv(NamespaceEnv)
}

// connNamespace is the namespace conn was made with ([WithNamespace] given
// to [NewConn] or [NewConns]), "" when none or when the SDK did not make it.
func connNamespace(conn grpc.ClientConnInterface) string {
	if m, ok := conn.(messageLimits); ok {
		conn = m.ClientConnInterface
	}
	if r := recipeOf(conn, ""); r != nil {
		return r.namespace
	}
	return ""
}

// Namespace is the namespace the client acts in: "" for the namespace
// "default" (see [WithNamespace]).
func (c *Client) Namespace() string { return c.namespace }

// WithNamespace returns a client of namespace ns on the same connections,
// with the same retry settings; c is unchanged. An empty ns means
// CONVEYOR_NAMESPACE, then the namespace "default" (as for the option
// [WithNamespace]). The new client does not own the connections: its
// Close does nothing, and closing c closes them for both.
//
//	billing := c.WithNamespace("billing")
//	id, err := billing.Submit(ctx, "invoice", conveyor.Args(42))
func (c *Client) WithNamespace(ns string) *Client {
	other := *c
	other.owned = nil
	other.namespace = resolveNamespace(ns)
	return &other
}
