package conveyor

import (
	"errors"
	"fmt"
	"time"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Progress limits the dispatcher enforces (larger reports are dropped there).
const (
	maxProgressState = 100
	maxProgressMeta  = 64 << 10
)

// ArgumentError is the error type reported when a handler's argument is
// missing or does not decode; such failures are not retried.
const ArgumentError = "ArgumentError"

// Task is one attempt of one task, as handed to its handler.
type Task struct {
	// ID is the task id (a UUIDv7).
	ID string
	// Name is the registered task name.
	Name string
	// Attempt is the attempt number, 1 for the first.
	Attempt uint32
	// MaxRetries is the number of retries the task's policy allows.
	MaxRetries uint32
	// Headers are the task's headers (trace context among them).
	Headers map[string]string
	// SoftTimeLimit is the cooperative time limit, 0 for none; the worker
	// cancels the handler's context when it passes.
	SoftTimeLimit time.Duration
	// HardTimeLimit is the task's hard time limit, 0 for none.
	HardTimeLimit time.Duration
	// CreatedAt is when the task was submitted.
	CreatedAt time.Time
	// WorkflowID is the workflow the task is a node of (Celery's root id),
	// "" for a task submitted alone.
	WorkflowID string
	// Namespace is the namespace of the task (the worker's), as the
	// assignment names it.
	Namespace string

	assignment *conveyorv1.Assignment
	// report sends a progress report; nil outside a worker or eager run.
	report func(*conveyorv1.Progress) error
}

// TaskFromAssignment builds the handler's view of an assignment; handy to
// unit-test handlers without a server.
func TaskFromAssignment(a *conveyorv1.Assignment) *Task {
	t := &Task{
		ID:            a.GetTaskId(),
		Name:          a.GetName(),
		Attempt:       a.GetAttempt(),
		MaxRetries:    a.GetMaxRetries(),
		Headers:       a.GetHeaders(),
		SoftTimeLimit: durationFromProto(a.GetSoftTimeLimit()),
		HardTimeLimit: durationFromProto(a.GetHardTimeLimit()),
		WorkflowID:    a.GetWorkflowId(),
		Namespace:     a.GetNamespace(),
		assignment:    a,
	}
	if a.GetCreatedAt() != nil {
		t.CreatedAt = a.GetCreatedAt().AsTime()
	}
	if t.Headers == nil {
		t.Headers = map[string]string{}
	}
	return t
}

// Assignment is the assignment as the dispatcher sent it.
func (t *Task) Assignment() *conveyorv1.Assignment { return t.assignment }

// LeaseToken is the token fencing this attempt.
func (t *Task) LeaseToken() uint64 { return t.assignment.GetLeaseToken() }

// NumArgs is the number of positional arguments.
func (t *Task) NumArgs() int { return len(t.assignment.GetArgs()) }

// RawArgs are the positional arguments, still encoded.
func (t *Task) RawArgs() []*Payload { return t.assignment.GetArgs() }

// RawKwargs are the named arguments, still encoded.
func (t *Task) RawKwargs() map[string]*Payload { return t.assignment.GetKwargs() }

// Arg decodes positional argument i from JSON into out (a pointer). A
// missing or malformed argument gives a non-retryable "ArgumentError"
// that the handler can return as it is.
func (t *Task) Arg(i int, out any) error {
	args := t.assignment.GetArgs()
	if i < 0 || i >= len(args) {
		return argumentError(fmt.Sprintf("missing positional argument %d (got %d)", i, len(args)))
	}
	if err := DecodeJSON(args[i], out); err != nil {
		return argumentError(fmt.Sprintf("positional argument %d: %v", i, err))
	}
	return nil
}

// Kwarg decodes named argument name from JSON into out; errors as [Task.Arg].
func (t *Task) Kwarg(name string, out any) error {
	p, ok := t.assignment.GetKwargs()[name]
	if !ok {
		return argumentError(fmt.Sprintf("missing named argument %q", name))
	}
	if err := DecodeJSON(p, out); err != nil {
		return argumentError(fmt.Sprintf("named argument %q: %v", name, err))
	}
	return nil
}

// HasKwarg reports whether named argument name was given.
func (t *Task) HasKwarg(name string) bool {
	_, ok := t.assignment.GetKwargs()[name]
	return ok
}

func argumentError(msg string) error {
	return NonRetryable(NewTaskError(ArgumentError, msg))
}

// ReportProgress reports the handler's progress (Celery's `update_state`):
// a custom state name such as "DOWNLOADING" (at most 100 bytes), percent
// complete (0 to 100) and meta, any JSON-encodable details (at most 64 KiB;
// nil for none). Watchers of the task ([Client.Watch]) and [Client.Get] see
// the latest report in the task's Progress. It returns once the report is
// queued on the worker's stream (best effort: a report racing the stream's
// end is lost), or an error saying why it was not sent.
func (t *Task) ReportProgress(state string, percent float64, meta any) error {
	if t.report == nil {
		return errors.New("conveyor: progress not sent: this task is not run by a worker (build it with a Worker or an eager client)")
	}
	if len(state) > maxProgressState {
		return fmt.Errorf("conveyor: progress state is %d bytes, at most %d are accepted: shorten it", len(state), maxProgressState)
	}
	if percent < 0 || percent > 100 {
		return fmt.Errorf("conveyor: progress percent %v is outside 0..100", percent)
	}
	p := &conveyorv1.Progress{State: state, Percent: percent, ReportedAt: timestamppb.Now()}
	if meta != nil {
		payload, err := EncodeJSON(meta)
		if err != nil {
			return fmt.Errorf("conveyor: progress meta cannot be encoded as json: %w", err)
		}
		if len(payload.GetData()) > maxProgressMeta {
			return fmt.Errorf("conveyor: progress meta is %d bytes, at most %d are accepted: send less", len(payload.GetData()), maxProgressMeta)
		}
		p.Meta = payload
	}
	return t.report(p)
}
