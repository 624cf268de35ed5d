// Package conveyor is the Go client and worker SDK of Conveyor, a
// distributed task queue.
//
// A [Client] submits tasks and awaits their outcomes through the submission
// and results services:
//
//	c, err := conveyor.Dial(ctx, "127.0.0.1:50051")
//	id, err := c.Submit(ctx, "add", conveyor.Args(2, 3), conveyor.WithQueue("math"))
//	var sum int
//	err = c.Result(ctx, id, 10*time.Second, &sum)
//
// A [Worker] holds one DispatchService.Connect stream, runs the handlers it
// registered as assignments arrive (at most Concurrency at once), heartbeats,
// reports outcomes, reconnects with backoff when the stream breaks, and drains
// when its context is cancelled:
//
//	w := conveyor.NewWorker(conn, conveyor.WorkerOptions{Queues: []string{"math"}, Concurrency: 8})
//	w.Register("add", func(ctx context.Context, t *conveyor.Task) (any, error) {
//		var a, b int
//		if err := t.Arg(0, &a); err != nil {
//			return nil, err
//		}
//		if err := t.Arg(1, &b); err != nil {
//			return nil, err
//		}
//		return a + b, nil
//	})
//	err = w.Run(ctx)
//
// Workflows (Celery's canvas) are built from signatures with [Chain],
// [Group] and [Chord], compiled client-side into one DAG and submitted with
// [Client.SubmitWorkflow]:
//
//	add := conveyor.Sig("add")
//	h, err := c.SubmitWorkflow(ctx, conveyor.Chord(
//		conveyor.Group(add.With(conveyor.Args(1, 1)), add.With(conveyor.Args(2, 2))),
//		conveyor.Sig("xsum")))
//	var total int
//	err = h.Get(ctx, &total)
//
// Handlers report progress with [Task.ReportProgress] and ask for a retry
// after a delay with [RetryAfter]. The client also replays and forgets tasks,
// lists dead letters, pauses queues and manages schedules. [WithToken] sends
// a bearer token; [WithNamespace] (or CONVEYOR_NAMESPACE) sets the namespace
// clients and workers act in; [WithTLS] (or CONVEYOR_TLS_CA, CONVEYOR_TLS_CERT and
// CONVEYOR_TLS_KEY) trusts a CA and presents a client certificate over TLS;
// several comma-separated addresses fail over; calls that
// are safe to repeat are retried on UNAVAILABLE ([CallRetry]). Where the
// roles run as separate processes, [WithEndpoint] (or CONVEYOR_RESULTS_ADDR
// and its siblings) gives a service its own address, and [NewConns] does
// the same for a worker's connection.
// [NewEagerClient] runs handlers in-process with no server, for tests.
//
// Arguments and results travel as JSON payloads, so tasks submitted from one
// language run in any other. Errors of RPCs carry their gRPC status
// ([status.FromError] and [Code] work on them), and match [ErrUnauthenticated]
// or [ErrPermissionDenied] when the server refused the caller's credentials or
// its principal's roles in the namespace; a task that failed is reported by
// [Client.Result] as a [*TaskFailedError].
package conveyor
