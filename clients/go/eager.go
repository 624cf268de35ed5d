package conveyor

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// NewEagerClient returns a [Client] that runs tasks in-process as they are
// submitted, with no server (Celery's task_always_eager), for unit tests of
// code that submits tasks. Submit runs the handler at once, in the calling
// goroutine, through the worker's own path: JSON arguments, soft time
// limit, panics, error types, progress reports, and retries while the
// task's policy allows (their delays are skipped, as in Celery's eager
// mode). SubmitWorkflow runs every node of a workflow the same way, in
// dependency order, before it returns (chain results passed on, chord
// bodies given the ordered list, links, error links once on the first
// failure, dependents of a failed node failed with its id as cause). Get,
// Wait, Result, Watch, Cancel, Replay, Forget, the dead letters and the
// workflow calls then answer from memory. A name with no handler fails at once
// with type "NotRegistered". Queues, workers, schedules and WatchEvents answer
// UNIMPLEMENTED. Countdown, ETA, expiry, priorities and limits are ignored.
// Namespaces are kept apart as a server keeps them: the client acts in
// CONVEYOR_NAMESPACE (else "default"), and [Client.WithNamespace] gives a
// client of another namespace on the same in-memory store, which does not
// see the first one's tasks.
func NewEagerClient(handlers map[string]Handler) *Client {
	backend := &eagerBackend{
		handlers: map[string]Handler{}, tasks: map[string]*conveyorv1.Task{}, keys: map[string]string{},
		workflows: map[string]*eagerWorkflow{}, workflowKeys: map[string]string{},
	}
	for name, h := range handlers {
		backend.handlers[name] = h
	}
	c := &Client{
		submission: backend,
		results:    backend,
		dispatch:   conveyorv1.NewDispatchServiceClient(unimplementedConn{}),
		scheduling: conveyorv1.NewSchedulingServiceClient(unimplementedConn{}),
		retry:      DefaultCallRetry,
		namespace:  resolveNamespace(""),
	}
	return c
}

// NewEagerClientFor is [NewEagerClient] with the handlers registered on w.
func NewEagerClientFor(w *Worker) *Client {
	w.mu.Lock()
	defer w.mu.Unlock()
	return NewEagerClient(w.handlers)
}

// eagerBackend implements the submission and results services in memory.
type eagerBackend struct {
	handlers map[string]Handler
	mu       sync.Mutex
	tasks    map[string]*conveyorv1.Task
	order    []string          // task ids in submission order
	keys     map[string]string // scopedKey(namespace, idempotency key) -> task id
	// workflows by id, and scopedKey(namespace, workflow idempotency key)
	// -> workflow id.
	workflows    map[string]*eagerWorkflow
	workflowKeys map[string]string
}

func (e *eagerBackend) SubmitTask(ctx context.Context, in *conveyorv1.SubmitTaskRequest, _ ...grpc.CallOption) (*conveyorv1.SubmitTaskResponse, error) {
	if err := validateEager(in.GetTask(), "task"); err != nil {
		return nil, err
	}
	return e.submit(ctx, in.GetNamespace(), in.GetTask()), nil
}

func (e *eagerBackend) SubmitTasks(ctx context.Context, in *conveyorv1.SubmitTasksRequest, _ ...grpc.CallOption) (*conveyorv1.SubmitTasksResponse, error) {
	for i, spec := range in.GetTasks() {
		if err := validateEager(spec, fmt.Sprintf("tasks[%d]", i)); err != nil {
			return nil, err
		}
	}
	out := &conveyorv1.SubmitTasksResponse{}
	for _, spec := range in.GetTasks() {
		out.Results = append(out.Results, e.submit(ctx, in.GetNamespace(), spec))
	}
	return out, nil
}

func validateEager(spec *conveyorv1.TaskSpec, field string) error {
	if spec.GetName() == "" {
		return status.Errorf(codes.InvalidArgument, "%s.name: must not be empty", field)
	}
	return nil
}

// eagerNamespace is the name of namespace ns as a server reports it.
func eagerNamespace(ns string) string {
	if ns == "" {
		return "default"
	}
	return ns
}

// scopedKey is an idempotency key within its namespace.
func scopedKey(ns, key string) string { return eagerNamespace(ns) + "\x00" + key }

func (e *eagerBackend) submit(ctx context.Context, ns string, spec *conveyorv1.TaskSpec) *conveyorv1.SubmitTaskResponse {
	e.mu.Lock()
	key := scopedKey(ns, spec.GetIdempotencyKey())
	if id, ok := e.keys[key]; ok && spec.GetIdempotencyKey() != "" {
		state := e.tasks[id].GetState()
		e.mu.Unlock()
		return &conveyorv1.SubmitTaskResponse{TaskId: id, Duplicate: true, State: state}
	}
	now := timestamppb.Now()
	queue := spec.GetOptions().GetQueue()
	if queue == "" {
		queue = "default"
	}
	task := &conveyorv1.Task{
		Id: uuidV7(), Name: spec.GetName(), Args: spec.GetArgs(), Kwargs: spec.GetKwargs(),
		Options: spec.GetOptions(), State: StateQueued, CreatedAt: now, UpdatedAt: now, Queue: queue,
		TraceContext: spec.GetTraceContext(), Namespace: eagerNamespace(ns),
	}
	e.tasks[task.Id] = task
	e.order = append(e.order, task.Id)
	if spec.GetIdempotencyKey() != "" {
		e.keys[key] = task.Id
	}
	e.mu.Unlock()
	e.run(ctx, task)
	return &conveyorv1.SubmitTaskResponse{TaskId: task.Id, State: e.stateOf(task.Id)}
}

// run runs task's attempts until one succeeds or its policy allows no more.
func (e *eagerBackend) run(ctx context.Context, task *conveyorv1.Task) {
	e.mu.Lock()
	maxRetries := task.GetOptions().GetRetry().GetMaxRetries()
	h := e.handlers[task.GetName()]
	e.mu.Unlock()
	for {
		e.mu.Lock()
		task.Attempt++
		task.State = StateRunning
		task.WorkerId = "eager"
		assignment := &conveyorv1.Assignment{
			TaskId: task.Id, Name: task.Name, Args: task.Args, Kwargs: task.Kwargs,
			Attempt: task.Attempt, LeaseToken: uint64(task.Attempt), Headers: task.GetOptions().GetHeaders(),
			SoftTimeLimit: task.GetOptions().GetSoftTimeLimit(), HardTimeLimit: task.GetOptions().GetHardTimeLimit(),
			CreatedAt: task.CreatedAt, MaxRetries: maxRetries, TraceContext: task.GetTraceContext(),
			Queue: task.Queue, WorkflowId: task.GetWorkflowId(), Namespace: task.GetNamespace(),
		}
		e.mu.Unlock()
		result, failure := e.attempt(ctx, h, assignment, task.Queue)
		e.mu.Lock()
		now := timestamppb.Now()
		task.UpdatedAt = now
		if failure == nil {
			task.State, task.Result, task.Error, task.FinishedAt = StateSucceeded, result, nil, now
			e.mu.Unlock()
			return
		}
		task.Failures++
		task.Error = failure
		if !(failure.GetRetryable() || failure.GetRetryAfter() != nil) || task.Failures > maxRetries {
			task.State, task.FinishedAt = StateFailed, now
			e.mu.Unlock()
			return
		}
		e.mu.Unlock()
	}
}

// attempt runs one attempt as a worker would, soft time limit included.
// Its span, as a worker's, has the context the task carries as its parent.
func (e *eagerBackend) attempt(ctx context.Context, h Handler, a *conveyorv1.Assignment, queue string) (result *Payload, failure *conveyorv1.TaskError) {
	ctx, span := startProcess(ctx, a, queue)
	var cause error
	defer func() { endProcess(span, failure, cause) }()
	if h == nil {
		return nil, &conveyorv1.TaskError{Type: "NotRegistered", Message: fmt.Sprintf("no handler is registered for %q: register it on the eager client", a.GetName())}
	}
	handlerCtx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancel(nil)
	task := TaskFromAssignment(a)
	task.report = func(p *conveyorv1.Progress) error {
		e.mu.Lock()
		defer e.mu.Unlock()
		if t := e.tasks[a.GetTaskId()]; t != nil {
			t.Progress = p
		}
		return nil
	}
	if task.SoftTimeLimit > 0 {
		timer := time.AfterFunc(task.SoftTimeLimit, func() { cancel(ErrSoftTimeLimit) })
		defer timer.Stop()
	}
	result, failure, cause = call(handlerCtx, h, task)
	return result, failure
}

func (e *eagerBackend) stateOf(id string) TaskState {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.tasks[id].GetState()
}

// snapshot is a copy of task id of namespace ns, or NOT_FOUND.
func (e *eagerBackend) snapshot(ns, id string) (*conveyorv1.Task, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	task, err := e.task(ns, id)
	if err != nil {
		return nil, err
	}
	return proto.Clone(task).(*conveyorv1.Task), nil
}

// task is task id of namespace ns, or NOT_FOUND (a task of another
// namespace is not found, as on a server). e.mu is held.
func (e *eagerBackend) task(ns, id string) (*conveyorv1.Task, error) {
	task, ok := e.tasks[id]
	if !ok || task.GetNamespace() != eagerNamespace(ns) {
		return nil, status.Errorf(codes.NotFound, "task not found: %s (eager mode knows only tasks submitted to this client, in its namespace)", id)
	}
	return task, nil
}

func (e *eagerBackend) CancelTask(_ context.Context, in *conveyorv1.CancelTaskRequest, _ ...grpc.CallOption) (*conveyorv1.CancelTaskResponse, error) {
	task, err := e.snapshot(in.GetNamespace(), in.GetTaskId())
	if err != nil {
		return nil, err
	}
	return &conveyorv1.CancelTaskResponse{Cancelled: false, State: task.GetState()}, nil
}

func (e *eagerBackend) ReplayTask(ctx context.Context, in *conveyorv1.ReplayTaskRequest, _ ...grpc.CallOption) (*conveyorv1.ReplayTaskResponse, error) {
	e.mu.Lock()
	task, err := e.task(in.GetNamespace(), in.GetTaskId())
	if err != nil {
		e.mu.Unlock()
		return nil, err
	}
	if task.State != StateFailed {
		e.mu.Unlock()
		return nil, status.Errorf(codes.FailedPrecondition, "task %s is %s: only FAILED tasks can be replayed", task.Id, task.State)
	}
	task.Failures, task.State, task.FinishedAt = 0, StateQueued, nil
	e.mu.Unlock()
	e.run(ctx, task)
	return &conveyorv1.ReplayTaskResponse{State: e.stateOf(task.Id)}, nil
}

func (e *eagerBackend) GetTask(_ context.Context, in *conveyorv1.GetTaskRequest, _ ...grpc.CallOption) (*conveyorv1.GetTaskResponse, error) {
	task, err := e.snapshot(in.GetNamespace(), in.GetTaskId())
	if err != nil {
		return nil, err
	}
	return &conveyorv1.GetTaskResponse{Task: task}, nil
}

func (e *eagerBackend) WaitTask(_ context.Context, in *conveyorv1.WaitTaskRequest, _ ...grpc.CallOption) (*conveyorv1.WaitTaskResponse, error) {
	task, err := e.snapshot(in.GetNamespace(), in.GetTaskId())
	if err != nil {
		return nil, err
	}
	return &conveyorv1.WaitTaskResponse{Task: task}, nil
}

func (e *eagerBackend) WatchTask(ctx context.Context, in *conveyorv1.WatchTaskRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[conveyorv1.WatchTaskResponse], error) {
	task, err := e.snapshot(in.GetNamespace(), in.GetTaskId())
	if err != nil {
		return nil, err
	}
	return &eagerStream[conveyorv1.WatchTaskResponse]{ctx: ctx, next: &conveyorv1.WatchTaskResponse{Task: task}}, nil
}

func (e *eagerBackend) ForgetTask(_ context.Context, in *conveyorv1.ForgetTaskRequest, _ ...grpc.CallOption) (*conveyorv1.ForgetTaskResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, err := e.task(in.GetNamespace(), in.GetTaskId()); err != nil {
		return nil, err
	}
	delete(e.tasks, in.GetTaskId())
	return &conveyorv1.ForgetTaskResponse{}, nil
}

func (e *eagerBackend) ListDeadLetters(_ context.Context, in *conveyorv1.ListDeadLettersRequest, _ ...grpc.CallOption) (*conveyorv1.ListDeadLettersResponse, error) {
	size := int(in.GetPageSize())
	if size == 0 {
		size = 100
	}
	start := 0
	if in.GetPageToken() != "" {
		n, err := strconv.Atoi(in.GetPageToken())
		if err != nil || n < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "page_token: not a token from a previous page")
		}
		start = n
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	out := &conveyorv1.ListDeadLettersResponse{}
	seen := 0
	for i, id := range e.order {
		task, ok := e.tasks[id]
		if !ok || task.State != StateFailed || task.GetNamespace() != eagerNamespace(in.GetNamespace()) {
			continue
		}
		if seen++; seen <= start {
			continue
		}
		if len(out.Tasks) == size {
			if i < len(e.order) {
				out.NextPageToken = strconv.Itoa(start + size)
			}
			break
		}
		out.Tasks = append(out.Tasks, proto.Clone(task).(*conveyorv1.Task))
	}
	return out, nil
}

// WatchEvents answers UNIMPLEMENTED: eager mode has no event stream.
func (e *eagerBackend) WatchEvents(_ context.Context, _ *conveyorv1.WatchEventsRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[conveyorv1.WatchEventsResponse], error) {
	return nil, status.Errorf(codes.Unimplemented, "%s is not available in eager mode: test it against `conveyor dev`", conveyorv1.ResultsService_WatchEvents_FullMethodName)
}

// eagerStream streams one message, the final state.
type eagerStream[T any] struct {
	ctx  context.Context
	next *T
}

func (w *eagerStream[T]) Recv() (*T, error) {
	if w.next == nil {
		return nil, io.EOF
	}
	next := w.next
	w.next = nil
	return next, nil
}
func (w *eagerStream[T]) Header() (metadata.MD, error) { return metadata.MD{}, nil }
func (w *eagerStream[T]) Trailer() metadata.MD         { return metadata.MD{} }
func (w *eagerStream[T]) CloseSend() error             { return nil }
func (w *eagerStream[T]) Context() context.Context     { return w.ctx }
func (w *eagerStream[T]) SendMsg(any) error            { return nil }
func (w *eagerStream[T]) RecvMsg(m any) error {
	resp, err := w.Recv()
	if err != nil {
		return err
	}
	proto.Merge(m.(proto.Message), any(resp).(proto.Message))
	return nil
}

// unimplementedConn answers every call UNIMPLEMENTED: eager mode has no
// dispatcher and no scheduler.
type unimplementedConn struct{}

func (unimplementedConn) Invoke(_ context.Context, method string, _, _ any, _ ...grpc.CallOption) error {
	return status.Errorf(codes.Unimplemented, "%s is not available in eager mode: test it against `conveyor dev`", method)
}

func (unimplementedConn) NewStream(_ context.Context, _ *grpc.StreamDesc, method string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Errorf(codes.Unimplemented, "%s is not available in eager mode: test it against `conveyor dev`", method)
}

// uuidV7 is a time-ordered UUID, as the server's task ids are.
func uuidV7() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	ms := uint64(time.Now().UnixMilli())
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], ms<<16)
	copy(b[0:6], ts[0:6])
	b[6] = b[6]&0x0f | 0x70
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
