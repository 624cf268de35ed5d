package conveyor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sort"
	"sync"
	"time"
	"unicode/utf8"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// Version is the SDK version the worker reports in Hello.
const Version = "0.1.0"

// Language is the implementation language the worker reports in Hello.
const Language = "go"

// DefaultGracePeriod is how long running tasks get to finish once a drain
// starts, unless WorkerOptions.GracePeriod says otherwise.
const DefaultGracePeriod = 30 * time.Second

// Limits the dispatcher enforces on Hello, checked early for a clear error.
const (
	maxQueues        = 64
	maxTaskNames     = 1024
	maxWorkerIDLen   = 200
	maxConcurrency   = 1 << 20
	minHeartbeat     = 10 * time.Millisecond
	defaultHeartbeat = 10 * time.Second
)

// Handler runs one attempt of a task. Its return value becomes the task's
// JSON result (a *Payload is sent as it is); a non-nil error fails the
// attempt (see [ErrorType], [IsRetryable], [NewTaskError], [NonRetryable]).
// A panic is recovered and reported as type "panic".
//
// ctx is cancelled when the dispatcher cancels the assignment, when the
// soft time limit passes, when a drain's grace period ends and when the
// stream that brought the task breaks; [context.Cause] tells which
// ([ErrTaskCancelled], [ErrSoftTimeLimit], [ErrDrainTimeout],
// [ErrStreamLost]). Only after a soft time limit is the outcome still
// reported.
type Handler func(ctx context.Context, t *Task) (any, error)

// WorkerOptions configures a [Worker]. The zero value is usable.
type WorkerOptions struct {
	// WorkerID identifies the worker, 1 to 200 characters. Default:
	// "hostname-pid".
	WorkerID string
	// Queues to consume, at most 64. Default: ["default"].
	Queues []string
	// Concurrency is the number of tasks run at once. Default: 1.
	Concurrency int
	// Hostname reported in Hello. Default: os.Hostname().
	Hostname string
	// HeartbeatInterval, when set, replaces the interval Welcome names.
	HeartbeatInterval time.Duration
	// GracePeriod is how long running tasks get to finish when the worker
	// drains. Default: 30 s.
	GracePeriod time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delays (doubling, with
	// jitter). Default: 100 ms and 5 s.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives the worker's logs. Default: slog.Default().
	Logger *slog.Logger
	// Namespace the worker serves (sent in Hello): it is handed tasks of
	// that namespace only. Default: the namespace conn was made with
	// ([WithNamespace] given to [NewConn] or [NewConns]), else
	// CONVEYOR_NAMESPACE, else "" (the namespace "default"). On a server
	// with an auth file, the worker's principal needs the worker role
	// there; otherwise Run returns an error matching [ErrPermissionDenied].
	Namespace string
}

// Worker runs registered handlers for the tasks the dispatcher assigns.
// Create it with [NewWorker], [Worker.Register] handlers, then [Worker.Run].
type Worker struct {
	conn grpc.ClientConnInterface
	opts WorkerOptions

	mu       sync.Mutex
	handlers map[string]Handler
	running  bool
}

// NewWorker returns a worker that holds its stream on conn (see [NewConn]
// for a connection from an address such as "http://127.0.0.1:50051"). The
// stream sends and receives messages of up to 64 MiB whatever conn's
// defaults.
//
// After the dispatcher drains a session (Drain, e.g. to rebalance workers
// across dispatcher replicas), the worker opens its next session on a new
// connection, since a load balancer places connections, not streams: when
// conn came from [NewConn] or [NewConns], the worker dials the dispatch
// service's address again with the same options, owns that connection and
// closes it when it is replaced or Run returns; conn itself is left open
// for the caller to close. Any other conn (one dialed with grpc.NewClient,
// or a wrapper) cannot be reproduced, so the next session opens a new stream
// on it, which may land on the same replica.
func NewWorker(conn grpc.ClientConnInterface, opts WorkerOptions) *Worker {
	if opts.Hostname == "" {
		opts.Hostname = hostname()
	}
	if opts.WorkerID == "" {
		opts.WorkerID = defaultWorkerID(opts.Hostname)
	}
	if len(opts.Queues) == 0 {
		opts.Queues = []string{"default"}
	}
	if opts.Concurrency == 0 {
		opts.Concurrency = 1
	}
	if opts.GracePeriod <= 0 {
		opts.GracePeriod = DefaultGracePeriod
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = DefaultMinBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Namespace == "" {
		opts.Namespace = resolveNamespace(connNamespace(conn))
	}
	opts.Queues = append([]string(nil), opts.Queues...)
	return &Worker{conn: withMessageLimits(conn), opts: opts, handlers: map[string]Handler{}}
}

// WorkerID is the id the worker introduces itself with.
func (w *Worker) WorkerID() string { return w.opts.WorkerID }

// Namespace is the namespace the worker serves ("" for the namespace
// "default"; see [WorkerOptions].Namespace).
func (w *Worker) Namespace() string { return w.opts.Namespace }

// Register sets the handler of tasks named name, replacing any earlier one.
// Handlers registered after Run started take effect at the next Run.
func (w *Worker) Register(name string, h Handler) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.handlers[name] = h
}

// config checks the options and snapshots the handlers.
func (w *Worker) config() (map[string]Handler, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	o := w.opts
	var problem string
	switch {
	case w.running:
		problem = "the worker is already running"
	case len(w.handlers) == 0:
		problem = "register at least one handler"
	case len(w.handlers) > maxTaskNames:
		problem = fmt.Sprintf("at most %d task names", maxTaskNames)
	case o.Concurrency < 1 || o.Concurrency > maxConcurrency:
		problem = fmt.Sprintf("concurrency must be 1 to %d", maxConcurrency)
	case utf8.RuneCountInString(o.WorkerID) > maxWorkerIDLen:
		problem = fmt.Sprintf("worker id must be 1 to %d characters", maxWorkerIDLen)
	case len(o.Queues) > maxQueues:
		problem = fmt.Sprintf("at most %d queues", maxQueues)
	}
	if problem != "" {
		return nil, fmt.Errorf("conveyor: invalid worker configuration: %s", problem)
	}
	for name, h := range w.handlers {
		if h == nil {
			return nil, fmt.Errorf("conveyor: invalid worker configuration: handler %q is nil", name)
		}
	}
	w.running = true
	handlers := make(map[string]Handler, len(w.handlers))
	for name, h := range w.handlers {
		handlers[name] = h
	}
	return handlers, nil
}

// Run serves until ctx is cancelled, then drains: it takes no more work,
// lets running tasks finish (up to GracePeriod), reports their outcomes,
// closes the stream and returns nil. When the stream breaks it reconnects
// with backoff. It returns an error only for what retrying cannot fix: a
// bad configuration, a refused Hello (INVALID_ARGUMENT, UNAUTHENTICATED,
// PERMISSION_DENIED, UNIMPLEMENTED) or a server breaking the protocol.
//
// Run does not wait for handlers that ignore their context's cancellation.
// To drain on SIGTERM and SIGINT, pass a context from
// signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM).
func (w *Worker) Run(ctx context.Context) error {
	handlers, err := w.config()
	if err != nil {
		return err
	}
	defer func() {
		w.mu.Lock()
		w.running = false
		w.mu.Unlock()
	}()
	rt := &workerRuntime{
		conn:     w.conn,
		redial:   redialer(w.conn),
		opts:     w.opts,
		handlers: handlers,
		log:      w.opts.Logger.With("worker_id", w.opts.WorkerID),
		base:     context.WithoutCancel(ctx),
		events:   make(chan runnerEvent, 2*w.opts.Concurrency+64),
		slots:    make(chan struct{}, w.opts.Concurrency),
		done:     make(chan struct{}),
	}
	if len(w.opts.Queues) == 1 {
		rt.queue = w.opts.Queues[0]
	}
	defer close(rt.done)
	defer rt.closeOwned()
	names := make([]string, 0, len(handlers))
	for name := range handlers {
		names = append(names, name)
	}
	sort.Strings(names)
	rt.hello = &conveyorv1.Hello{
		WorkerId:    w.opts.WorkerID,
		Queues:      w.opts.Queues,
		TaskNames:   names,
		Concurrency: uint32(w.opts.Concurrency),
		Language:    Language,
		SdkVersion:  Version,
		Hostname:    w.opts.Hostname,
		Namespace:   w.opts.Namespace,
	}
	backoff := newBackoff(w.opts.MinBackoff, w.opts.MaxBackoff)
	for epoch := uint64(1); ; epoch++ {
		if ctx.Err() != nil {
			return nil
		}
		end := rt.session(ctx, epoch)
		var delay time.Duration
		switch end.kind {
		case endStopped:
			rt.log.Info("worker stopped")
			return nil
		case endDrained:
			backoff.reset()
			delay = backoff.next()
			rt.renewConn(end.reason, delay)
		case endBroken:
			if isFatal(end.err) {
				return end.err
			}
			if end.welcomed {
				backoff.reset()
			}
			delay = backoff.next()
			if end.welcomed {
				rt.log.Warn("worker stream lost, reconnecting", "error", end.err, "delay", delay)
			} else {
				rt.log.Warn("cannot open a worker session, retrying", "error", end.err, "delay", delay)
			}
		}
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return nil
		}
	}
}

// renewConn moves the worker to a new connection after a drained session,
// when it can dial one: a new stream on the old connection would reach the
// same dispatcher replica.
func (rt *workerRuntime) renewConn(reason conveyorv1.DrainReason, delay time.Duration) {
	drained := "session drained"
	if name := drainReasonName(reason); name != "" {
		drained += " (" + name + ")"
	}
	if rt.redial == nil {
		rt.log.Info(drained+", reconnecting on the same connection (the worker cannot dial a connection it was not given by conveyor.NewConn or NewConns)", "delay", delay)
		return
	}
	conn, err := rt.redial()
	if err != nil {
		rt.log.Warn(drained+", reconnecting on the same connection: cannot open a new one", "error", err, "delay", delay)
		return
	}
	rt.closeOwned()
	rt.owned = conn
	rt.conn = withMessageLimits(conn)
	rt.log.Info(drained+", reconnecting on a new connection", "delay", delay)
}

// closeOwned closes the connection the worker dialed itself, if any.
func (rt *workerRuntime) closeOwned() {
	if rt.owned != nil {
		_ = rt.owned.Close()
		rt.owned = nil
	}
}

// isFatal: errors that reconnecting would only repeat.
func isFatal(err error) bool {
	var pe *ProtocolError
	if errors.As(err, &pe) {
		return true
	}
	switch Code(err) {
	case codes.InvalidArgument, codes.Unauthenticated, codes.PermissionDenied, codes.Unimplemented:
		return true
	}
	return false
}

// workerRuntime is the state of one Run that outlives its sessions: tasks
// keep running (and holding slots) after the stream that brought them broke.
type workerRuntime struct {
	// conn carries the sessions: the worker's conn, or owned once a drain
	// moved the worker to a connection of its own.
	conn grpc.ClientConnInterface
	// redial opens a new connection like the worker's conn; nil when conn
	// was not made by NewConn or NewConns.
	redial func() (*grpc.ClientConn, error)
	// owned is the connection the worker dialed after the last drain.
	owned    *grpc.ClientConn
	opts     WorkerOptions
	handlers map[string]Handler
	hello    *conveyorv1.Hello
	log      *slog.Logger
	// base is the parent of handler contexts: Run's values, not its
	// cancellation (which means "drain", not "stop handlers").
	base context.Context
	// events carries runner starts and finishes to the session loop.
	events chan runnerEvent
	// inFlight counts runners started and not yet reaped, of this session
	// or an earlier one. Only the session loop touches it.
	inFlight int
	// slots is a semaphore of Concurrency.
	slots chan struct{}
	// done is closed when Run returns, releasing runners blocked on events.
	done chan struct{}
	// queue names the destination of the attempts' spans when an
	// assignment does not (a server older than Assignment.queue): the
	// worker's queue when it consumes one, "" when several.
	queue string
}

// runnerEvent says a runner started its handler, or finished.
type runnerEvent struct {
	epoch    uint64
	taskID   string
	token    uint64
	finished bool
	outcome  *conveyorv1.TaskOutcome
	// progress, when set, is a report to send (the event is neither a
	// start nor a finish).
	progress *conveyorv1.Progress
}

func (rt *workerRuntime) emit(ev runnerEvent) {
	select {
	case rt.events <- ev:
	case <-rt.done:
	}
}

// runTask runs one assignment to its outcome; ctx is the handler's context.
func (rt *workerRuntime) runTask(ctx context.Context, cancel context.CancelCauseFunc, epoch uint64, a *conveyorv1.Assignment, h Handler) {
	defer cancel(nil)
	ev := runnerEvent{epoch: epoch, taskID: a.GetTaskId(), token: a.GetLeaseToken()}
	select {
	case rt.slots <- struct{}{}:
	case <-ctx.Done():
		// Cancelled before it could start: the outcome would be dropped.
		ev.finished = true
		rt.emit(ev)
		return
	}
	rt.emit(ev)
	ctx, span := startProcess(ctx, a, rt.queue)
	task := TaskFromAssignment(a)
	task.report = func(p *conveyorv1.Progress) error {
		report := runnerEvent{epoch: epoch, taskID: a.GetTaskId(), token: a.GetLeaseToken(), progress: p}
		select {
		case rt.events <- report:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("conveyor: progress not sent: the task's context ended (%w)", context.Cause(ctx))
		case <-rt.done:
			return errors.New("conveyor: progress not sent: the worker stopped")
		}
	}
	var taskErr *conveyorv1.TaskError
	var result *Payload
	var handlerErr error
	if h == nil {
		// Retryable, as in every SDK: a worker that registered the name can
		// take the task on its next attempt.
		taskErr = &conveyorv1.TaskError{
			Type:      "NotRegistered",
			Message:   fmt.Sprintf("no handler is registered for %q", a.GetName()),
			Retryable: true,
			Reason:    conveyorv1.FailureReason_FAILURE_REASON_UNKNOWN_TASK,
		}
	} else {
		if task.SoftTimeLimit > 0 {
			timer := time.AfterFunc(task.SoftTimeLimit, func() {
				rt.log.Warn("soft time limit passed, cancelling", "task_id", task.ID, "limit", task.SoftTimeLimit)
				cancel(ErrSoftTimeLimit)
			})
			defer timer.Stop()
		}
		started := time.Now()
		result, taskErr, handlerErr = call(ctx, h, task)
		if taskErr != nil {
			rt.log.Info("task failed", "task_id", task.ID, "name", task.Name, "attempt", task.Attempt,
				"error_type", taskErr.GetType(), "message", taskErr.GetMessage(), "retryable", taskErr.GetRetryable())
		} else {
			rt.log.Debug("task succeeded", "task_id", task.ID, "name", task.Name, "elapsed", time.Since(started))
		}
	}
	endProcess(span, taskErr, handlerErr)
	<-rt.slots
	outcome := &conveyorv1.TaskOutcome{TaskId: a.GetTaskId(), LeaseToken: a.GetLeaseToken()}
	if taskErr != nil {
		outcome.Outcome = &conveyorv1.TaskOutcome_Error{Error: taskErr}
	} else {
		outcome.Outcome = &conveyorv1.TaskOutcome_Result{Result: result}
	}
	ev.finished = true
	ev.outcome = outcome
	rt.emit(ev)
}

// call runs the handler, recovering a panic, and encodes what it returned.
// A failure comes with the error behind it (the handler's, a panic's or
// the encoding's), for the attempt's span.
func call(ctx context.Context, h Handler, task *Task) (result *Payload, failure *conveyorv1.TaskError, cause error) {
	defer func() {
		if r := recover(); r != nil {
			result = nil
			cause = fmt.Errorf("panic: %v", r)
			failure = &conveyorv1.TaskError{
				Type:      "panic",
				Message:   fmt.Sprint(r),
				Traceback: string(debug.Stack()),
				Retryable: true,
			}
		}
	}()
	value, err := h(ctx, task)
	if err != nil {
		return nil, handlerFailure(ctx, err, task.SoftTimeLimit), err
	}
	payload, err := EncodeJSON(value)
	if err != nil {
		return nil, &conveyorv1.TaskError{
			Type:      "SerializationError",
			Message:   fmt.Sprintf("cannot encode the result as json: %v", err),
			Traceback: string(debug.Stack()),
		}, err
	}
	return payload, nil, nil
}

// handlerFailure turns a handler's error into the TaskError reported.
func handlerFailure(ctx context.Context, err error, softLimit time.Duration) *conveyorv1.TaskError {
	if errors.Is(context.Cause(ctx), ErrSoftTimeLimit) &&
		(errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrSoftTimeLimit)) {
		return &conveyorv1.TaskError{
			Type:      "SoftTimeLimitExceeded",
			Message:   fmt.Sprintf("soft time limit (%s) exceeded", softLimit),
			Traceback: string(debug.Stack()),
			Retryable: IsRetryable(err),
		}
	}
	tb := traceback(err)
	if tb == "" {
		// Go errors carry no stack: this is the worker goroutine's stack
		// at the point the failure was reported.
		tb = string(debug.Stack())
	}
	failure := &conveyorv1.TaskError{
		Type:      ErrorType(err),
		Message:   err.Error(),
		Traceback: tb,
		Retryable: IsRetryable(err),
	}
	if delay, ok := retryDelay(err); ok {
		failure.Retryable = true
		failure.RetryAfter = durationToProto(delay)
	}
	return failure
}
