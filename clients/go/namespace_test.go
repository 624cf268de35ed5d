package conveyor_test

// The parity rows `namespace` and `authorization`: namespaces kept apart
// on TestMain's server, and an auth file's principals and roles on a
// server of the test's own.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.conveyor.dev/conveyor"
	"google.golang.org/grpc/codes"
)

// uniqueNamespace keeps tests apart on the shared server.
func uniqueNamespace(label string) string {
	return fmt.Sprintf("go-%s-%d-%d", label, os.Getpid(), queueCounter.Add(1))
}

func Test_parity_namespace(t *testing.T) {
	ctx := testContext(t)
	t.Setenv(conveyor.NamespaceEnv, "") // what CI's environment says must not matter here
	nsA, nsB := uniqueNamespace("ns-a"), uniqueNamespace("ns-b")
	queue := uniqueQueue(t)

	a, err := conveyor.Dial(ctx, serverAddr, conveyor.WithNamespace(nsA))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b := a.WithNamespace(nsB) // the same connections, another namespace
	if a.Namespace() != nsA || b.Namespace() != nsB {
		t.Fatalf("namespaces %q and %q, want %q and %q", a.Namespace(), b.Namespace(), nsA, nsB)
	}

	// Two workers of the same queue and task name, one per namespace; each
	// handler answers with its own namespace and the one its task says.
	var runsA, runsB atomic.Int32
	handler := func(own string, runs *atomic.Int32) conveyor.Handler {
		return func(_ context.Context, task *conveyor.Task) (any, error) {
			runs.Add(1)
			return own + "/" + task.Namespace, nil
		}
	}
	connA, err := conveyor.NewConn(serverAddr, conveyor.WithNamespace(nsA)) // the namespace from the connection
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = connA.Close() })
	workerA := startWorkerOn(t, connA, conveyor.WorkerOptions{WorkerID: nsA + "-worker", Queues: []string{queue}},
		map[string]conveyor.Handler{"which": handler(nsA, &runsA)})
	workerB := startWorker(t, conveyor.WorkerOptions{WorkerID: nsB + "-worker", Queues: []string{queue}, Namespace: nsB},
		map[string]conveyor.Handler{"which": handler(nsB, &runsB)})
	if workerA.w.Namespace() != nsA || workerB.w.Namespace() != nsB {
		t.Fatalf("worker namespaces %q and %q", workerA.w.Namespace(), workerB.w.Namespace())
	}
	// ListWorkers of a namespace shows its worker, not the other's.
	workerIDs := func(c *conveyor.Client) []string {
		workers, err := c.Workers(ctx)
		if err != nil {
			t.Fatalf("Workers in %s: %v", c.Namespace(), err)
		}
		var ids []string
		for _, w := range workers {
			if w.GetNamespace() != c.Namespace() {
				t.Fatalf("Workers in %s lists %s of namespace %q", c.Namespace(), w.GetWorkerId(), w.GetNamespace())
			}
			ids = append(ids, w.GetWorkerId())
		}
		return ids
	}
	eventually(t, 10*time.Second, "both workers connected", func() bool {
		return slices.Contains(workerIDs(a), workerA.w.WorkerID()) && slices.Contains(workerIDs(b), workerB.w.WorkerID())
	})
	if ids := workerIDs(b); slices.Contains(ids, workerA.w.WorkerID()) {
		t.Fatalf("Workers in %s lists %s's worker: %v", nsB, nsA, ids)
	}
	if ids := workerIDs(a); slices.Contains(ids, workerB.w.WorkerID()) {
		t.Fatalf("Workers in %s lists %s's worker: %v", nsA, nsB, ids)
	}

	// Tasks of A are done by A's worker only, B's by B's, while both wait
	// on the same queue with free slots.
	idsA, err := a.SubmitMany(ctx, slices.Repeat([]conveyor.TaskRequest{conveyor.NewRequest("which", conveyor.WithQueue(queue))}, 10))
	if err != nil {
		t.Fatal(err)
	}
	idB, err := b.Submit(ctx, "which", conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range idsA {
		var who string
		if err := a.Result(ctx, id, 10*time.Second, &who); err != nil || who != nsA+"/"+nsA {
			t.Fatalf("task %s of %s: %q, %v", id, nsA, who, err)
		}
	}
	var who string
	if err := b.Result(ctx, idB, 10*time.Second, &who); err != nil || who != nsB+"/"+nsB {
		t.Fatalf("task %s of %s: %q, %v", idB, nsB, who, err)
	}
	if runsA.Load() != int32(len(idsA)) || runsB.Load() != 1 {
		t.Fatalf("runs: %d in %s (want %d), %d in %s (want 1)", runsA.Load(), nsA, len(idsA), runsB.Load(), nsB)
	}
	task, err := a.Get(ctx, idsA[0])
	if err != nil || task.GetNamespace() != nsA {
		t.Fatalf("Get in %s: namespace %q, %v", nsA, task.GetNamespace(), err)
	}

	// A's ids are unknown in B and in the default namespace.
	for _, other := range []*conveyor.Client{b, newClient(t)} {
		if _, err := other.Get(ctx, idsA[0]); conveyor.Code(err) != codes.NotFound {
			t.Fatalf("Get of %s's task from %q: %v", nsA, other.Namespace(), err)
		}
		if _, err := other.Watch(ctx, idsA[0]); conveyor.Code(err) != codes.NotFound {
			t.Fatalf("Watch of %s's task from %q: %v", nsA, other.Namespace(), err)
		}
		if _, err := other.Cancel(ctx, idsA[0]); conveyor.Code(err) != codes.NotFound {
			t.Fatalf("Cancel of %s's task from %q: %v", nsA, other.Namespace(), err)
		}
	}

	// CONVEYOR_NAMESPACE is the default of clients and workers, the example
	// worker program's included.
	t.Setenv(conveyor.NamespaceEnv, nsA)
	fromEnv := newClient(t)
	if fromEnv.Namespace() != nsA {
		t.Fatalf("client namespace from %s: %q", conveyor.NamespaceEnv, fromEnv.Namespace())
	}
	if _, err := fromEnv.Get(ctx, idsA[0]); err != nil {
		t.Fatalf("Get from a client of %s=%s: %v", conveyor.NamespaceEnv, nsA, err)
	}
	if b.WithNamespace("").Namespace() != nsA {
		t.Fatal(`WithNamespace("") does not fall back to CONVEYOR_NAMESPACE`)
	}
	exampleQueue := queue + "-example"
	example := exec.Command(exampleBinary(t, "conveyor-example-worker"))
	example.Env = append(os.Environ(), "CONVEYOR_ADDR="+serverAddr, "CONVEYOR_QUEUE="+exampleQueue, conveyor.NamespaceEnv+"="+nsA)
	if err := example.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = example.Process.Kill(); _ = example.Wait() }()
	id, err := a.Submit(ctx, "lang", conveyor.WithQueue(exampleQueue))
	if err != nil {
		t.Fatal(err)
	}
	var lang string
	if err := a.Result(ctx, id, 10*time.Second, &lang); err != nil || lang != "go" {
		t.Fatalf("the example worker with %s=%s: %q, %v", conveyor.NamespaceEnv, nsA, lang, err)
	}
}

// Permissions of the auth file's roles (see the server's auth spec).
var rolePermissions = map[string][]string{
	"producer": {"submit", "cancel", "read"},
	"worker":   {"work"},
	"reader":   {"read"},
	"admin":    {"submit", "cancel", "admin", "read", "work"},
}

// authCall is one call the SDK wraps, with the permission it needs.
type authCall struct {
	name string
	perm string
	call func(ctx context.Context, p authPrincipal) error
}

// authPrincipal is a caller: its token ("" for none) and namespace, a
// client made with them, and the address of the server.
type authPrincipal struct {
	addr, token, namespace string
	c                      *conveyor.Client
	// observer lists workers in the namespace (an admin of it), nil where
	// there is none.
	observer *conveyor.Client
}

// An id no task, workflow or schedule has.
const madeUpID = "01900000-0000-7000-8000-000000000000"

func authCalls(t *testing.T, queue string) []authCall {
	schedule := func(id string) *conveyor.Schedule {
		s, err := conveyor.NewSchedule(id, conveyor.Every(time.Hour), "add", conveyor.Args(1, 2), conveyor.WithQueue(queue))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	var created atomic.Int32
	return []authCall{
		{"Submit", "submit", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.Submit(ctx, "add", conveyor.Args(1, 2), conveyor.WithQueue(queue))
			return err
		}},
		{"SubmitMany", "submit", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.SubmitMany(ctx, []conveyor.TaskRequest{conveyor.NewRequest("add", conveyor.Args(1, 2), conveyor.WithQueue(queue))})
			return err
		}},
		{"SubmitWorkflow", "submit", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.SubmitWorkflow(ctx, conveyor.Chain(conveyor.Sig("add", conveyor.Args(1, 2)), conveyor.Sig("add", conveyor.Args(3))), conveyor.WithQueue(queue))
			return err
		}},
		{"Cancel", "cancel", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.Cancel(ctx, madeUpID)
			return err
		}},
		{"CancelWorkflow", "cancel", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.CancelWorkflow(ctx, madeUpID)
			return err
		}},
		{"Replay", "admin", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.Replay(ctx, madeUpID)
			return err
		}},
		{"Forget", "admin", func(ctx context.Context, p authPrincipal) error {
			return p.c.Forget(ctx, madeUpID)
		}},
		{"PauseQueue", "admin", func(ctx context.Context, p authPrincipal) error {
			return p.c.PauseQueue(ctx, queue+"-paused")
		}},
		{"ResumeQueue", "admin", func(ctx context.Context, p authPrincipal) error {
			return p.c.ResumeQueue(ctx, queue+"-paused")
		}},
		{"CreateSchedule", "admin", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.CreateSchedule(ctx, schedule(fmt.Sprintf("%s-%d", queue, created.Add(1))))
			return err
		}},
		{"UpdateSchedule", "admin", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.UpdateSchedule(ctx, schedule(madeUpID))
			return err
		}},
		{"DeleteSchedule", "admin", func(ctx context.Context, p authPrincipal) error {
			return p.c.DeleteSchedule(ctx, madeUpID)
		}},
		{"PauseSchedule", "admin", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.PauseSchedule(ctx, madeUpID)
			return err
		}},
		{"ResumeSchedule", "admin", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.ResumeSchedule(ctx, madeUpID)
			return err
		}},
		{"TriggerSchedule", "admin", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.TriggerSchedule(ctx, madeUpID)
			return err
		}},
		{"Get", "read", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.Get(ctx, madeUpID)
			return err
		}},
		{"Wait", "read", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.Wait(ctx, madeUpID, time.Second)
			return err
		}},
		{"Result", "read", func(ctx context.Context, p authPrincipal) error {
			return p.c.Result(ctx, madeUpID, time.Second, nil)
		}},
		{"Watch", "read", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.Watch(ctx, madeUpID)
			return err
		}},
		{"DeadLetters", "read", func(ctx context.Context, p authPrincipal) error {
			for _, err := range p.c.DeadLetters(ctx) {
				if err != nil {
					return err
				}
			}
			return nil
		}},
		{"GetWorkflow", "read", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.GetWorkflow(ctx, madeUpID, conveyor.ViewNodes)
			return err
		}},
		{"WaitWorkflow", "read", func(ctx context.Context, p authPrincipal) error {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_, err := p.c.WaitWorkflow(ctx, madeUpID)
			return err
		}},
		{"WorkflowResult", "read", func(ctx context.Context, p authPrincipal) error {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return p.c.WorkflowResult(ctx, madeUpID, nil)
		}},
		{"WatchWorkflow", "read", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.WatchWorkflow(ctx, madeUpID, conveyor.ViewNodes)
			return err
		}},
		{"Workers", "read", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.Workers(ctx)
			return err
		}},
		{"GetSchedule", "read", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.GetSchedule(ctx, madeUpID)
			return err
		}},
		{"ListSchedules", "read", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.ListSchedules(ctx)
			return err
		}},
		{"ScheduleRuns", "read", func(ctx context.Context, p authPrincipal) error {
			_, err := p.c.ScheduleRuns(ctx, madeUpID)
			return err
		}},
		{"Worker.Run", "work", runAuthWorker},
	}
}

// runAuthWorker runs a worker as p until the server refuses its session
// (the error Run returns) or p.observer lists it (nil).
func runAuthWorker(ctx context.Context, p authPrincipal) error {
	conn, err := conveyor.NewConn(p.addr, conveyor.WithToken(p.token), conveyor.WithNamespace(p.namespace))
	if err != nil {
		return err
	}
	defer conn.Close()
	w := conveyor.NewWorker(conn, conveyor.WorkerOptions{WorkerID: "auth-" + randomHex(8), Logger: testLogger()})
	w.Register("add", addHandler)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err == nil {
				return fmt.Errorf("worker %s: Run returned nil before its session was seen (deadline)", w.WorkerID())
			}
			return err
		case <-tick.C:
			if p.observer == nil {
				continue
			}
			workers, err := p.observer.Workers(ctx)
			if err != nil {
				cancel()
				<-done
				return fmt.Errorf("listing workers: %w", err)
			}
			if slices.ContainsFunc(workers, func(info *conveyor.WorkerInfo) bool { return info.GetWorkerId() == w.WorkerID() }) {
				cancel()
				return <-done // nil after draining
			}
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// writeAuthFile writes the auth file atomically (a new file renamed over
// the old one), as a deployment tool would.
func writeAuthFile(t *testing.T, path string, principals map[string]string, roles map[string]string) {
	t.Helper()
	var b strings.Builder
	names := make([]string, 0, len(principals))
	for name := range principals {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		out, err := exec.Command(serverBin(), "auth", "hash-token", principals[name]).Output()
		if err != nil {
			t.Fatalf("conveyor auth hash-token: %v", err)
		}
		fmt.Fprintf(&b, "[[principal]]\nname = %q\ntoken_sha256 = [%q]\nroles = { team-a = [%q] }\n\n", name, strings.TrimSpace(string(out)), roles[name])
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// checkDenied fails unless err is the permission-denied error, distinct
// from the unauthenticated one, with the server's message naming principal.
func checkDenied(t *testing.T, what string, err error, principal string) {
	t.Helper()
	var rpcErr *conveyor.RPCError
	switch {
	case !errors.Is(err, conveyor.ErrPermissionDenied) || conveyor.Code(err) != codes.PermissionDenied:
		t.Errorf("%s: want PERMISSION_DENIED (conveyor.ErrPermissionDenied), got %v", what, err)
	case errors.Is(err, conveyor.ErrUnauthenticated):
		t.Errorf("%s: a permission-denied error matches ErrUnauthenticated: %v", what, err)
	case !errors.As(err, &rpcErr) || !strings.Contains(rpcErr.Message(), "principal '"+principal+"'") || !strings.Contains(err.Error(), rpcErr.Message()):
		t.Errorf("%s: the error does not carry the server's message naming principal %q: %v", what, principal, err)
	}
}

// checkUnauthenticated fails unless err is the unauthenticated error.
func checkUnauthenticated(t *testing.T, what string, err error) {
	t.Helper()
	switch {
	case !errors.Is(err, conveyor.ErrUnauthenticated) || conveyor.Code(err) != codes.Unauthenticated:
		t.Errorf("%s: want UNAUTHENTICATED (conveyor.ErrUnauthenticated), got %v", what, err)
	case errors.Is(err, conveyor.ErrPermissionDenied):
		t.Errorf("%s: an unauthenticated error matches ErrPermissionDenied: %v", what, err)
	}
}

// checkAllowed fails on an auth error: a call allowed may still find
// nothing (NOT_FOUND for the made-up ids), but nothing else.
func checkAllowed(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil && conveyor.Code(err) != codes.NotFound {
		t.Errorf("%s: want success or NOT_FOUND, got %v", what, err)
	}
}

func Test_parity_authorization(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t.Setenv(conveyor.NamespaceEnv, "")
	tokens := map[string]string{}
	roles := map[string]string{}
	for role := range rolePermissions {
		tokens[role] = role + "-" + randomHex(16)
		roles[role] = role
	}
	// A second producer, revoked later.
	tokens["revoked"], roles["revoked"] = "revoked-"+randomHex(16), "producer"
	authFile := filepath.Join(t.TempDir(), "auth.toml")
	writeAuthFile(t, authFile, tokens, roles)
	addr := startServer(t, "--auth-file", authFile, "--metrics-listen", "off")
	queue := uniqueQueue(t)
	calls := authCalls(t, queue)

	principal := func(token, namespace string) authPrincipal {
		c, err := conveyor.Dial(ctx, addr, conveyor.WithToken(token), conveyor.WithNamespace(namespace))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return authPrincipal{addr: addr, token: token, namespace: namespace, c: c}
	}
	observerA := principal(tokens["admin"], "team-a").c

	// Each role in team-a: allowed exactly what its role grants.
	for role, perms := range rolePermissions {
		p := principal(tokens[role], "team-a")
		p.observer = observerA
		for _, call := range calls {
			what := fmt.Sprintf("%s in team-a: %s", role, call.name)
			err := call.call(ctx, p)
			if slices.Contains(perms, call.perm) {
				checkAllowed(t, what, err)
			} else {
				checkDenied(t, what, err, role)
			}
		}
	}
	// Each role in team-b (where none has a role): denied everything.
	for role := range rolePermissions {
		p := principal(tokens[role], "team-b")
		for _, call := range calls {
			checkDenied(t, fmt.Sprintf("%s in team-b: %s", role, call.name), call.call(ctx, p), role)
		}
	}
	// No token, an unknown token: unauthenticated, in either namespace.
	for _, ns := range []string{"team-a", "team-b"} {
		for _, token := range []string{"", "not-a-token-" + randomHex(8)} {
			p := principal(token, ns)
			for _, call := range calls {
				checkUnauthenticated(t, fmt.Sprintf("token %q in %s: %s", token, ns, call.name), call.call(ctx, p))
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// The worker principal's worker runs team-a's tasks; in team-b its
	// session is refused.
	producer := principal(tokens["producer"], "team-a").c
	workerConn, err := conveyor.NewConn(addr, conveyor.WithToken(tokens["worker"]), conveyor.WithNamespace("team-a"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = workerConn.Close() })
	startWorkerOn(t, workerConn, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{"add": addHandler})
	id, err := producer.Submit(ctx, "add", conveyor.Args(20, 22), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	var sum int
	if err := producer.Result(ctx, id, 10*time.Second, &sum); err != nil || sum != 42 {
		t.Fatalf("a task of team-a run by the worker principal: %d, %v", sum, err)
	}
	bConn, err := conveyor.NewConn(addr, conveyor.WithToken(tokens["worker"]), conveyor.WithNamespace("team-b"))
	if err != nil {
		t.Fatal(err)
	}
	defer bConn.Close()
	inB := conveyor.NewWorker(bConn, conveyor.WorkerOptions{Queues: []string{queue}, Logger: testLogger()})
	inB.Register("add", addHandler)
	runCtx, stop := context.WithTimeout(ctx, 10*time.Second)
	defer stop()
	checkDenied(t, "the worker principal's worker in team-b", inB.Run(runCtx), "worker")

	// A token removed from the auth file is refused once the server has
	// re-read it; the others still work.
	revoked := principal(tokens["revoked"], "team-a")
	checkAllowed(t, "the second producer before its removal: Get", calls[slices.IndexFunc(calls, func(c authCall) bool { return c.name == "Get" })].call(ctx, revoked))
	delete(tokens, "revoked")
	writeAuthFile(t, authFile, tokens, roles)
	var last error
	eventually(t, 15*time.Second, "the removed token to be refused", func() bool {
		_, last = revoked.c.Get(ctx, id)
		return errors.Is(last, conveyor.ErrUnauthenticated)
	})
	for _, call := range calls {
		checkUnauthenticated(t, "revoked token: "+call.name, call.call(ctx, revoked))
	}
	if _, err := producer.Get(ctx, id); err != nil {
		t.Fatalf("the producer after the reload: %v", err)
	}
}
