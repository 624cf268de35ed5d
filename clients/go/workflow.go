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
)

// WorkflowInfo is a workflow as the results service reports it: state,
// counts, result, and (in the nodes view) every node with its task.
type WorkflowInfo = conveyorv1.Workflow

// WorkflowState is the state of a workflow.
type WorkflowState = conveyorv1.WorkflowState

// Workflow states.
const (
	WorkflowRunning   = conveyorv1.WorkflowState_WORKFLOW_STATE_RUNNING
	WorkflowSucceeded = conveyorv1.WorkflowState_WORKFLOW_STATE_SUCCEEDED
	WorkflowFailed    = conveyorv1.WorkflowState_WORKFLOW_STATE_FAILED
	WorkflowCancelled = conveyorv1.WorkflowState_WORKFLOW_STATE_CANCELLED
)

// WorkflowView says how much of a workflow a read returns.
type WorkflowView = conveyorv1.WorkflowView

// Workflow views.
const (
	// ViewSummary: state, counts and result; no nodes.
	ViewSummary = conveyorv1.WorkflowView_WORKFLOW_VIEW_SUMMARY
	// ViewNodes: every node with its state and outcome, without arguments.
	ViewNodes = conveyorv1.WorkflowView_WORKFLOW_VIEW_NODES
	// ViewFull: every node with its arguments too.
	ViewFull = conveyorv1.WorkflowView_WORKFLOW_VIEW_FULL
)

// WorkflowHandle is a submitted workflow (Celery's AsyncResult of a canvas).
type WorkflowHandle struct {
	// ID is the workflow id.
	ID string
	// TaskIDs are the task ids of the nodes, in compilation order (see
	// [CompileWorkflow]).
	TaskIDs []string
	// Duplicate is true when an earlier workflow with the same idempotency
	// key was returned instead of creating one.
	Duplicate bool
	// Spec is the workflow as submitted.
	Spec *conveyorv1.WorkflowSpec

	client *Client
}

// SubmitWorkflow compiles canvas (see [CompileWorkflow] for opts) and
// submits it in one atomic call: the tasks without parents are queued at
// once, the others wait for theirs. Unless [CallRetry] says
// NoDefaultIdempotencyKey, a workflow without an idempotency key gets a
// random one, so that the call can be repeated on UNAVAILABLE without
// creating it twice. One publish span covers the call; the workflow
// carries its trace context (unless [WithTraceContext] gives one), which
// its nodes inherit.
func (c *Client) SubmitWorkflow(ctx context.Context, canvas Canvas, opts ...Option) (*WorkflowHandle, error) {
	spec, err := CompileWorkflow(canvas, opts...)
	if err != nil {
		return nil, err
	}
	return c.SubmitWorkflowSpec(ctx, spec)
}

// SubmitWorkflowSpec submits a workflow built by hand (or by
// [CompileWorkflow]): any DAG the server accepts. spec gets a random
// idempotency key as in [Client.SubmitWorkflow].
func (c *Client) SubmitWorkflowSpec(ctx context.Context, spec *conveyorv1.WorkflowSpec) (*WorkflowHandle, error) {
	if spec.GetIdempotencyKey() == "" && !c.retry.NoDefaultIdempotencyKey {
		spec.IdempotencyKey = "go-" + randomUUID()
	}
	ctx, span := startPublishWorkflow(ctx, spec)
	resp, err := retryCall(ctx, c.retry, spec.GetIdempotencyKey() != "", func(ctx context.Context) (*conveyorv1.SubmitWorkflowResponse, error) {
		return c.submission.SubmitWorkflow(ctx, &conveyorv1.SubmitWorkflowRequest{Workflow: spec, Namespace: c.namespace})
	})
	if err != nil {
		err = wrapRPC("SubmitWorkflow", err)
		endSpan(span, err)
		return nil, err
	}
	span.SetAttributes(attrMessageID.String(resp.GetWorkflowId()))
	if len(resp.GetTaskIds()) != len(spec.GetNodes()) {
		err := &ProtocolError{fmt.Sprintf("submitted a workflow of %d nodes, got %d task ids", len(spec.GetNodes()), len(resp.GetTaskIds()))}
		endSpan(span, err)
		return nil, err
	}
	endSpan(span, nil)
	return &WorkflowHandle{
		ID:        resp.GetWorkflowId(),
		TaskIDs:   resp.GetTaskIds(),
		Duplicate: resp.GetDuplicate(),
		Spec:      spec,
		client:    c,
	}, nil
}

// Outputs are the handles of the tasks whose results are the workflow's
// result, in order: a chain's last task, a group's tasks, a chord's body.
func (h *WorkflowHandle) Outputs() []*TaskHandle {
	out := make([]*TaskHandle, 0, len(h.Spec.GetOutputs()))
	for _, i := range h.Spec.GetOutputs() {
		out = append(out, h.Node(int(i)))
	}
	return out
}

// Node is the handle of node i's task (an index into TaskIDs); nil when out
// of range.
func (h *WorkflowHandle) Node(i int) *TaskHandle {
	if i < 0 || i >= len(h.TaskIDs) {
		return nil
	}
	return h.client.Task(h.TaskIDs[i])
}

// Wait waits until every node has finished (or ctx ends) and returns the
// workflow's summary, whatever its state; see [Client.WaitWorkflow].
func (h *WorkflowHandle) Wait(ctx context.Context) (*WorkflowInfo, error) {
	return h.client.WaitWorkflow(ctx, h.ID)
}

// Get waits for the workflow and decodes its result into out; see
// [Client.WorkflowResult].
func (h *WorkflowHandle) Get(ctx context.Context, out any) error {
	return h.client.WorkflowResult(ctx, h.ID, out)
}

// Workflow returns the workflow now, with every node (GetWorkflow, nodes
// view).
func (h *WorkflowHandle) Workflow(ctx context.Context) (*WorkflowInfo, error) {
	return h.client.GetWorkflow(ctx, h.ID, ViewNodes)
}

// Cancel cancels every unfinished node; see [Client.CancelWorkflow].
func (h *WorkflowHandle) Cancel(ctx context.Context) (int, error) {
	return h.client.CancelWorkflow(ctx, h.ID)
}

// Watch streams the workflow's snapshots; see [Client.WatchWorkflow].
func (h *WorkflowHandle) Watch(ctx context.Context) (*WorkflowStream, error) {
	return h.client.WatchWorkflow(ctx, h.ID, ViewNodes)
}

// GetWorkflow returns workflow id now, as much of it as view says
// (0: [ViewNodes]). NOT_FOUND for an unknown id or one whose result TTL
// passed.
func (c *Client) GetWorkflow(ctx context.Context, id string, view WorkflowView) (*WorkflowInfo, error) {
	resp, err := retryCall(ctx, c.retry, true, func(ctx context.Context) (*conveyorv1.GetWorkflowResponse, error) {
		return c.results.GetWorkflow(ctx, &conveyorv1.GetWorkflowRequest{WorkflowId: id, View: view, Namespace: c.namespace})
	})
	if err != nil {
		return nil, wrapRPC("GetWorkflow", err)
	}
	if resp.GetWorkflow() == nil {
		return nil, &ProtocolError{"GetWorkflow response carries no workflow"}
	}
	return resp.GetWorkflow(), nil
}

// WaitWorkflow waits until every node of workflow id has finished and
// returns its summary (state, counts, result; no nodes), whatever its
// state. It waits as long as ctx allows: when ctx's deadline passes first
// the error matches [ErrTimeout]; waits longer than the server's maximum
// are carried out as several calls.
func (c *Client) WaitWorkflow(ctx context.Context, id string) (*WorkflowInfo, error) {
	ctx, span := startWait(ctx, id)
	wf, err := c.waitWorkflow(ctx, id, ViewSummary)
	endSpan(span, err)
	return wf, err
}

func (c *Client) waitWorkflow(ctx context.Context, id string, view WorkflowView) (*WorkflowInfo, error) {
	for {
		started := time.Now()
		resp, err := retryCall(ctx, c.retry, true, func(ctx context.Context) (*conveyorv1.WaitWorkflowResponse, error) {
			return c.results.WaitWorkflow(ctx, &conveyorv1.WaitWorkflowRequest{WorkflowId: id, View: view, Namespace: c.namespace})
		})
		if err != nil && Code(err) == codes.DeadlineExceeded && ctx.Err() == nil && time.Since(started) >= minUsefulWait {
			continue // the server's cap ended this call, not ctx
		}
		if err != nil {
			return nil, wrapRPC("WaitWorkflow", err)
		}
		if resp.GetWorkflow() == nil {
			return nil, &ProtocolError{"WaitWorkflow response carries no workflow"}
		}
		return resp.GetWorkflow(), nil
	}
}

// WorkflowResult waits for workflow id (as [Client.WaitWorkflow] does) and
// decodes its JSON result into out, a pointer as for json.Unmarshal (nil
// discards it): a chain's last result, the list of a group's results, a
// chord body's result. A FAILED workflow gives a *[TaskFailedError] naming
// the node whose failure failed it first (with its error, and CauseTaskID
// when that node did not run because of a dependency); a CANCELLED one a
// *[TaskNotSucceededError].
func (c *Client) WorkflowResult(ctx context.Context, id string, out any) error {
	wf, err := c.WaitWorkflow(ctx, id)
	if err != nil {
		return err
	}
	return c.decodeWorkflow(ctx, wf, out)
}

// decodeWorkflow is the result of a finished workflow, or the error
// WorkflowResult returns for it.
func (c *Client) decodeWorkflow(ctx context.Context, wf *WorkflowInfo, out any) error {
	switch wf.GetState() {
	case WorkflowSucceeded:
		if err := DecodeJSON(wf.GetResult(), out); err != nil {
			return fmt.Errorf("conveyor: decoding the result of workflow %s: %w", wf.GetId(), err)
		}
		return nil
	case WorkflowFailed:
		full := wf
		if len(wf.GetNodes()) == 0 {
			var err error
			if full, err = c.GetWorkflow(ctx, wf.GetId(), ViewNodes); err != nil {
				return fmt.Errorf("conveyor: workflow %s failed; reading which node failed: %w", wf.GetId(), err)
			}
		}
		return workflowFailure(full)
	case WorkflowCancelled:
		return &TaskNotSucceededError{WorkflowID: wf.GetId(), State: StateCancelled}
	default:
		return &ProtocolError{fmt.Sprintf("workflow %s is %s after waiting for it", wf.GetId(), wf.GetState())}
	}
}

// workflowFailure is the error of a FAILED workflow read with its nodes:
// that of Workflow.failed_task_id, else of its first FAILED node.
func workflowFailure(wf *WorkflowInfo) error {
	var failed *TaskInfo
	for _, n := range wf.GetNodes() {
		task := n.GetTask()
		if task.GetState() != StateFailed {
			continue
		}
		if task.GetId() == wf.GetFailedTaskId() {
			failed = task
			break
		}
		if failed == nil {
			failed = task
		}
	}
	if failed == nil {
		return &TaskFailedError{WorkflowID: wf.GetId(), TaskID: wf.GetFailedTaskId(), Type: "Unknown", Message: "the workflow failed, but no node reports an error"}
	}
	err := taskFailed(failed)
	err.WorkflowID = wf.GetId()
	return err
}

// CancelWorkflow cancels every unfinished node of workflow id at once: no
// node starts after it returns, running ones have their handlers' contexts
// cancelled. It returns the number of nodes this call cancelled (0 when
// the workflow had finished).
func (c *Client) CancelWorkflow(ctx context.Context, id string) (int, error) {
	resp, err := c.submission.CancelWorkflow(ctx, &conveyorv1.CancelWorkflowRequest{WorkflowId: id, Namespace: c.namespace})
	if err != nil {
		return 0, wrapRPC("CancelWorkflow", err)
	}
	return int(resp.GetCancelled()), nil
}

// WatchWorkflow streams workflow id (as much of each snapshot as view says;
// 0: [ViewNodes]): its current state, then a snapshot after each node that
// finishes or becomes ready; the stream ends (Recv returns io.EOF) once the
// workflow has finished. The first snapshot is read before it returns, so
// an unknown id fails here with NOT_FOUND. A stream broken with UNAVAILABLE
// is reopened as [CallRetry] allows, starting again with the current
// snapshot.
func (c *Client) WatchWorkflow(ctx context.Context, id string, view WorkflowView) (*WorkflowStream, error) {
	ctx, cancel := context.WithCancel(ctx)
	s := &WorkflowStream{client: c, ctx: ctx, id: id, view: view, cancel: cancel}
	first, err := s.recv()
	if err != nil && err != io.EOF {
		cancel()
		return nil, err
	}
	s.first, s.firstErr = first, err
	return s, nil
}

// WorkflowStream is the stream of snapshots returned by [Client.WatchWorkflow].
type WorkflowStream struct {
	client   *Client
	ctx      context.Context
	id       string
	view     WorkflowView
	stream   grpc.ServerStreamingClient[conveyorv1.WatchWorkflowResponse]
	cancel   context.CancelFunc
	first    *WorkflowInfo
	firstErr error
	started  bool
}

// Recv returns the next snapshot, or io.EOF after the last one.
func (s *WorkflowStream) Recv() (*WorkflowInfo, error) {
	if !s.started {
		s.started = true
		if s.first != nil || s.firstErr != nil {
			return s.first, s.firstErr
		}
	}
	return s.recv()
}

func (s *WorkflowStream) recv() (*WorkflowInfo, error) {
	var bo *reconnectBackoff
	for attempt := 1; ; attempt++ {
		resp, err := s.recvOnce()
		if err == nil {
			if resp.GetWorkflow() == nil {
				return nil, &ProtocolError{"WatchWorkflow response carries no workflow"}
			}
			return resp.GetWorkflow(), nil
		}
		if err == io.EOF {
			s.cancel()
			return nil, io.EOF
		}
		s.stream = nil
		if Code(err) != codes.Unavailable || attempt >= s.client.retry.attempts() || s.ctx.Err() != nil {
			s.cancel()
			return nil, wrapRPC("WatchWorkflow", err)
		}
		if bo == nil {
			bo = newBackoff(s.client.retry.MinBackoff, s.client.retry.MaxBackoff)
		}
		if !sleepCtx(s.ctx, bo.next()) {
			s.cancel()
			return nil, wrapRPC("WatchWorkflow", err)
		}
	}
}

func (s *WorkflowStream) recvOnce() (*conveyorv1.WatchWorkflowResponse, error) {
	if s.stream == nil {
		stream, err := s.client.results.WatchWorkflow(s.ctx, &conveyorv1.WatchWorkflowRequest{WorkflowId: s.id, View: s.view, Namespace: s.client.namespace})
		if err != nil {
			return nil, err
		}
		s.stream = stream
	}
	return s.stream.Recv()
}

// All iterates over the remaining snapshots; it stops after the last one or
// after yielding an error.
func (s *WorkflowStream) All() iter.Seq2[*WorkflowInfo, error] {
	return func(yield func(*WorkflowInfo, error) bool) {
		defer s.Close()
		for {
			wf, err := s.Recv()
			if err == io.EOF {
				return
			}
			if !yield(wf, err) || err != nil {
				return
			}
		}
	}
}

// Close stops the stream early.
func (s *WorkflowStream) Close() { s.cancel() }

// TaskHandle is one submitted task, for calls by id (the tasks of a
// workflow among them: [WorkflowHandle.Outputs], [WorkflowHandle.Node]).
type TaskHandle struct {
	// ID is the task id.
	ID     string
	client *Client
}

// Task returns the handle of task id.
func (c *Client) Task(id string) *TaskHandle { return &TaskHandle{ID: id, client: c} }

// Get is [Client.Get] of the task.
func (t *TaskHandle) Get(ctx context.Context) (*TaskInfo, error) { return t.client.Get(ctx, t.ID) }

// Wait is [Client.Wait] of the task.
func (t *TaskHandle) Wait(ctx context.Context, timeout time.Duration) (*TaskInfo, error) {
	return t.client.Wait(ctx, t.ID, timeout)
}

// Result is [Client.Result] of the task.
func (t *TaskHandle) Result(ctx context.Context, timeout time.Duration, out any) error {
	return t.client.Result(ctx, t.ID, timeout, out)
}

// Cancel is [Client.Cancel] of the task.
func (t *TaskHandle) Cancel(ctx context.Context) (bool, error) { return t.client.Cancel(ctx, t.ID) }

// Watch is [Client.Watch] of the task.
func (t *TaskHandle) Watch(ctx context.Context) (*TaskStream, error) {
	return t.client.Watch(ctx, t.ID)
}
