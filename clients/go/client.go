package conveyor

import (
	"context"
	"fmt"
	"io"
	"iter"
	"time"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// MaxTasksPerBatch is the most tasks one SubmitTasks call carries.
const MaxTasksPerBatch = 1000

// MaxBatchBytes is the most encoded bytes of tasks one SubmitTasks call of
// [Client.SubmitMany] carries: a larger batch is split (a server accepts
// messages of 64 MiB; one task holds at most 4 MiB of argument payloads).
const MaxBatchBytes = 16 << 20

const (
	// waitDeadlineMargin: how much longer than the requested wait the gRPC
	// deadline is, so that the server's own timeout answers first.
	waitDeadlineMargin = 2 * time.Second
	// minUsefulWait: a WaitTask that ended with DEADLINE_EXCEEDED sooner than
	// this is not repeated (the server refused rather than waited).
	minUsefulWait = time.Second
)

// TaskInfo is a task as the results service reports it: state, attempts,
// result or error.
type TaskInfo = conveyorv1.Task

// TaskState is the state of a task.
type TaskState = conveyorv1.TaskState

// Task states.
const (
	StateScheduled = conveyorv1.TaskState_TASK_STATE_SCHEDULED
	StateQueued    = conveyorv1.TaskState_TASK_STATE_QUEUED
	StateLeased    = conveyorv1.TaskState_TASK_STATE_LEASED
	StateRunning   = conveyorv1.TaskState_TASK_STATE_RUNNING
	StateSucceeded = conveyorv1.TaskState_TASK_STATE_SUCCEEDED
	StateFailed    = conveyorv1.TaskState_TASK_STATE_FAILED
	StateCancelled = conveyorv1.TaskState_TASK_STATE_CANCELLED
	StateExpired   = conveyorv1.TaskState_TASK_STATE_EXPIRED
	StateWaiting   = conveyorv1.TaskState_TASK_STATE_WAITING
)

// IsTerminal reports whether a task in state s is finished.
func IsTerminal(s TaskState) bool {
	switch s {
	case StateSucceeded, StateFailed, StateCancelled, StateExpired:
		return true
	}
	return false
}

// Client is a producer's handle on Conveyor: it submits tasks and reads,
// awaits, watches or cancels them. It is safe for concurrent use.
type Client struct {
	owned      io.Closer
	submission conveyorv1.SubmissionServiceClient
	results    conveyorv1.ResultsServiceClient
	dispatch   conveyorv1.DispatchServiceClient
	scheduling conveyorv1.SchedulingServiceClient
	retry      CallRetry
	// namespace is sent in every request ("" is the namespace "default").
	namespace string
}

// NewClient uses conn for every service (a [*Conns] sends each service's
// calls to its own address). The caller keeps ownership of conn. Calls send
// and receive messages of up to 64 MiB whatever conn's defaults. The client
// acts in the namespace conn was made with ([WithNamespace] given to
// [NewConn] or [NewConns]), else in CONVEYOR_NAMESPACE, else in the
// namespace "default"; [Client.WithNamespace] changes it.
func NewClient(conn grpc.ClientConnInterface) *Client {
	return NewClientWith(conn, conn)
}

// NewClientWith uses one connection per service, for deployments where
// submission and results run as separate processes. Queue (dispatch) and
// schedule (scheduling) calls go through the submission connection, so that
// process must serve those roles or forward them (`conveyor serve --peer`).
// [NewConns] (or [Dial] with [WithEndpoint]) gives every service its own
// address. The namespace is found as [NewClient] finds it, on submission
// (then results).
func NewClientWith(submission, results grpc.ClientConnInterface) *Client {
	ns := connNamespace(submission)
	if ns == "" {
		ns = connNamespace(results)
	}
	submission, results = withMessageLimits(submission), withMessageLimits(results)
	return &Client{
		submission: conveyorv1.NewSubmissionServiceClient(submission),
		results:    conveyorv1.NewResultsServiceClient(results),
		dispatch:   conveyorv1.NewDispatchServiceClient(submission),
		scheduling: conveyorv1.NewSchedulingServiceClient(submission),
		retry:      DefaultCallRetry,
		namespace:  resolveNamespace(ns),
	}
}

// Close closes the connection if [Dial] opened it; otherwise it does nothing.
func (c *Client) Close() error {
	if c.owned == nil {
		return nil
	}
	return c.owned.Close()
}

// SubmissionClient is the generated client, for calls this type does not wrap.
func (c *Client) SubmissionClient() conveyorv1.SubmissionServiceClient { return c.submission }

// ResultsClient is the generated client, for calls this type does not wrap.
func (c *Client) ResultsClient() conveyorv1.ResultsServiceClient { return c.results }

// Submit submits task name with its arguments and options and returns its id
// (or, for a repeated idempotency key, the id of the task first submitted
// with it).
func (c *Client) Submit(ctx context.Context, name string, opts ...Option) (string, error) {
	spec, err := NewRequest(name, opts...).Spec()
	if err != nil {
		return "", err
	}
	c.addIdempotencyKey(spec)
	ctx, span := startPublish(ctx, []*conveyorv1.TaskSpec{spec}, false)
	resp, err := retryCall(ctx, c.retry, spec.GetIdempotencyKey() != "", func(ctx context.Context) (*conveyorv1.SubmitTaskResponse, error) {
		return c.submission.SubmitTask(ctx, &conveyorv1.SubmitTaskRequest{Task: spec, Namespace: c.namespace})
	})
	if err != nil {
		err = wrapRPC("SubmitTask", err)
		endSpan(span, err)
		return "", err
	}
	span.SetAttributes(attrMessageID.String(resp.GetTaskId()))
	endSpan(span, nil)
	return resp.GetTaskId(), nil
}

// SubmitMany submits tasks and returns their ids in order. Every task is
// encoded before anything is sent; tasks travel in SubmitTasks calls of at
// most [MaxTasksPerBatch] tasks and [MaxBatchBytes] encoded bytes,
// whichever comes first (a task larger than that travels alone). Each call
// is all-or-nothing, but when a later call fails the ids of the earlier,
// accepted ones are returned with the error. One publish span covers all
// the calls.
func (c *Client) SubmitMany(ctx context.Context, tasks []TaskRequest) ([]string, error) {
	specs := make([]*conveyorv1.TaskSpec, 0, len(tasks))
	for _, t := range tasks {
		spec, err := t.Spec()
		if err != nil {
			return nil, err
		}
		c.addIdempotencyKey(spec)
		specs = append(specs, spec)
	}
	if len(specs) == 0 {
		return []string{}, nil
	}
	ctx, span := startPublish(ctx, specs, true)
	ids, err := c.submitBatches(ctx, specs)
	endSpan(span, err)
	return ids, err
}

func (c *Client) submitBatches(ctx context.Context, specs []*conveyorv1.TaskSpec) ([]string, error) {
	ids := make([]string, 0, len(specs))
	for _, batch := range splitBatches(specs) {
		safe := true
		for _, spec := range batch {
			safe = safe && spec.GetIdempotencyKey() != ""
		}
		resp, err := retryCall(ctx, c.retry, safe, func(ctx context.Context) (*conveyorv1.SubmitTasksResponse, error) {
			return c.submission.SubmitTasks(ctx, &conveyorv1.SubmitTasksRequest{Tasks: batch, Namespace: c.namespace})
		})
		if err != nil {
			return ids, wrapRPC("SubmitTasks", err)
		}
		if len(resp.GetResults()) != len(batch) {
			return ids, &ProtocolError{fmt.Sprintf("submitted %d tasks, got %d results", len(batch), len(resp.GetResults()))}
		}
		for _, r := range resp.GetResults() {
			ids = append(ids, r.GetTaskId())
		}
	}
	return ids, nil
}

// splitBatches cuts specs, in order, into runs of at most MaxTasksPerBatch
// tasks and MaxBatchBytes encoded bytes; a task larger than that is alone.
func splitBatches(specs []*conveyorv1.TaskSpec) [][]*conveyorv1.TaskSpec {
	var batches [][]*conveyorv1.TaskSpec
	start, size := 0, 0
	for i, spec := range specs {
		// The spec's own bytes plus its field tag and length prefix.
		n := proto.Size(spec) + 6
		if i > start && (i-start >= MaxTasksPerBatch || size+n > MaxBatchBytes) {
			batches = append(batches, specs[start:i:i])
			start, size = i, 0
		}
		size += n
	}
	if start < len(specs) {
		batches = append(batches, specs[start:])
	}
	return batches
}

// Get returns the task's current state and, once finished, its outcome.
func (c *Client) Get(ctx context.Context, id string) (*TaskInfo, error) {
	resp, err := retryCall(ctx, c.retry, true, func(ctx context.Context) (*conveyorv1.GetTaskResponse, error) {
		return c.results.GetTask(ctx, &conveyorv1.GetTaskRequest{TaskId: id, Namespace: c.namespace})
	})
	if err != nil {
		return nil, wrapRPC("GetTask", err)
	}
	if resp.GetTask() == nil {
		return nil, &ProtocolError{"GetTask response carries no task"}
	}
	return resp.GetTask(), nil
}

// Wait waits up to timeout for the task to reach a terminal state and
// returns it, whatever that state is. When the timeout passes first the
// error is an *RPCError with code DEADLINE_EXCEEDED, matching [ErrTimeout].
// A timeout of 0 or less waits until ctx's deadline, capped by the server.
// Waits longer than the server's maximum are carried out as several calls.
func (c *Client) Wait(ctx context.Context, id string, timeout time.Duration) (*TaskInfo, error) {
	ctx, span := startWait(ctx, id)
	task, err := c.wait(ctx, id, timeout)
	endSpan(span, err)
	return task, err
}

func (c *Client) wait(ctx context.Context, id string, timeout time.Duration) (*TaskInfo, error) {
	if timeout <= 0 {
		resp, err := retryCall(ctx, c.retry, true, func(ctx context.Context) (*conveyorv1.WaitTaskResponse, error) {
			return c.results.WaitTask(ctx, &conveyorv1.WaitTaskRequest{TaskId: id, Namespace: c.namespace})
		})
		return waitAnswer(resp, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		started := time.Now()
		resp, err := retryCall(ctx, c.retry, true, func(ctx context.Context) (*conveyorv1.WaitTaskResponse, error) {
			remaining := max(time.Until(deadline), time.Millisecond)
			callCtx, cancel := context.WithTimeout(ctx, remaining+waitDeadlineMargin)
			defer cancel()
			return c.results.WaitTask(callCtx, &conveyorv1.WaitTaskRequest{
				TaskId:    id,
				Timeout:   durationToProto(remaining),
				Namespace: c.namespace,
			})
		})
		if err != nil && Code(err) == codes.DeadlineExceeded && ctx.Err() == nil &&
			time.Since(started) >= minUsefulWait && time.Until(deadline) >= minUsefulWait {
			continue // the server's cap ended this call, not our timeout
		}
		return waitAnswer(resp, err)
	}
}

func waitAnswer(resp *conveyorv1.WaitTaskResponse, err error) (*TaskInfo, error) {
	if err != nil {
		return nil, wrapRPC("WaitTask", err)
	}
	if resp.GetTask() == nil {
		return nil, &ProtocolError{"WaitTask response carries no task"}
	}
	return resp.GetTask(), nil
}

// Result waits up to timeout for the task (as [Client.Wait] does) and
// decodes its JSON result into out, a pointer as for json.Unmarshal (nil
// discards it). A FAILED task gives a *[TaskFailedError]; CANCELLED and
// EXPIRED give a *[TaskNotSucceededError].
func (c *Client) Result(ctx context.Context, id string, timeout time.Duration, out any) error {
	task, err := c.Wait(ctx, id, timeout)
	if err != nil {
		return err
	}
	return DecodeResult(task, out)
}

// DecodeResult decodes a finished task's result into out, or returns the
// error [Client.Result] would for a task that did not succeed.
func DecodeResult(task *TaskInfo, out any) error {
	switch task.GetState() {
	case StateSucceeded:
		if err := DecodeJSON(task.GetResult(), out); err != nil {
			return fmt.Errorf("conveyor: decoding the result of task %s: %w", task.GetId(), err)
		}
		return nil
	case StateFailed:
		return taskFailed(task)
	default:
		return &TaskNotSucceededError{TaskID: task.GetId(), State: task.GetState()}
	}
}

// Cancel cancels (revokes) a task: one that has not started never runs, a
// running one has its handler's context cancelled on its worker and its
// late outcome ignored. It reports true when this call cancelled it, false
// when the task had already finished.
func (c *Client) Cancel(ctx context.Context, id string) (bool, error) {
	resp, err := c.submission.CancelTask(ctx, &conveyorv1.CancelTaskRequest{TaskId: id, Namespace: c.namespace})
	if err != nil {
		return false, wrapRPC("CancelTask", err)
	}
	return resp.GetCancelled(), nil
}

// Watch streams the task's current state, then every change; the stream
// ends (Recv returns io.EOF) after a terminal state. The first state is
// read before Watch returns, so an unknown id fails here with NOT_FOUND.
// When the stream breaks with UNAVAILABLE (a server died) it is reopened,
// as the client's [CallRetry] allows; the reopened stream starts with the
// task's current state, which may repeat the last one seen.
func (c *Client) Watch(ctx context.Context, id string) (*TaskStream, error) {
	ctx, cancel := context.WithCancel(ctx)
	s := &TaskStream{client: c, ctx: ctx, id: id, cancel: cancel}
	first, err := s.recv()
	if err != nil && err != io.EOF {
		cancel()
		return nil, err
	}
	s.first, s.firstErr = first, err
	return s, nil
}

// TaskStream is the stream of a task's states returned by [Client.Watch].
type TaskStream struct {
	client   *Client
	ctx      context.Context
	id       string
	stream   grpc.ServerStreamingClient[conveyorv1.WatchTaskResponse]
	cancel   context.CancelFunc
	first    *TaskInfo
	firstErr error
	started  bool
}

// Recv returns the next state of the task, or io.EOF after the terminal one.
func (s *TaskStream) Recv() (*TaskInfo, error) {
	if !s.started {
		s.started = true
		if s.first != nil || s.firstErr != nil {
			return s.first, s.firstErr
		}
	}
	return s.recv()
}

// recv reads the next message, opening or reopening the stream as needed.
func (s *TaskStream) recv() (*TaskInfo, error) {
	var bo *reconnectBackoff
	for attempt := 1; ; attempt++ {
		resp, err := s.recvOnce()
		if err == nil {
			if resp.GetTask() == nil {
				return nil, &ProtocolError{"WatchTask response carries no task"}
			}
			return resp.GetTask(), nil
		}
		if err == io.EOF {
			s.cancel()
			return nil, io.EOF
		}
		s.stream = nil
		if Code(err) != codes.Unavailable || attempt >= s.client.retry.attempts() || s.ctx.Err() != nil {
			s.cancel()
			return nil, wrapRPC("WatchTask", err)
		}
		if bo == nil {
			bo = newBackoff(s.client.retry.MinBackoff, s.client.retry.MaxBackoff)
		}
		if !sleepCtx(s.ctx, bo.next()) {
			s.cancel()
			return nil, wrapRPC("WatchTask", err)
		}
	}
}

func (s *TaskStream) recvOnce() (*conveyorv1.WatchTaskResponse, error) {
	if s.stream == nil {
		stream, err := s.client.results.WatchTask(s.ctx, &conveyorv1.WatchTaskRequest{TaskId: s.id, Namespace: s.client.namespace})
		if err != nil {
			return nil, err
		}
		s.stream = stream
	}
	return s.stream.Recv()
}

// All iterates over the remaining states; it stops after the terminal state
// or after yielding an error.
func (s *TaskStream) All() iter.Seq2[*TaskInfo, error] {
	return func(yield func(*TaskInfo, error) bool) {
		defer s.Close()
		for {
			task, err := s.Recv()
			if err == io.EOF {
				return
			}
			if !yield(task, err) || err != nil {
				return
			}
		}
	}
}

// Close stops the stream early.
func (s *TaskStream) Close() { s.cancel() }
