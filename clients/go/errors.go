package conveyor

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrTimeout matches (with [errors.Is]) an error returned because a wait's
// timeout or deadline passed first, such as [Client.Wait] ending with
// DEADLINE_EXCEEDED. Such errors also match [context.DeadlineExceeded].
var ErrTimeout = errors.New("conveyor: timed out")

// Authentication and authorization failures, matched (with [errors.Is]) by
// the *[RPCError] of a call, or of a worker's refused session, that the
// server answered with the corresponding status. The RPCError carries the
// server's message, which says what is missing:
//
//	_, err := c.Submit(ctx, "add", conveyor.Args(1, 2))
//	if errors.Is(err, conveyor.ErrPermissionDenied) {
//		// "principal 'api' may not submit in namespace 'billing' (its roles there: none); ..."
//	}
var (
	// ErrUnauthenticated: UNAUTHENTICATED, the server did not accept the
	// caller's credentials: no token, a malformed authorization header, or
	// a token it does not know (never issued, or revoked from its auth
	// file). Give a valid token with [WithToken].
	ErrUnauthenticated = errors.New("conveyor: unauthenticated")
	// ErrPermissionDenied: PERMISSION_DENIED, the caller is known but its
	// principal lacks the permission the call needs in the call's
	// namespace (see [WithNamespace]): e.g. a reader submitting, a producer
	// pausing a queue, a worker in a namespace where it has no worker role.
	ErrPermissionDenied = errors.New("conveyor: permission denied")
)

// Causes of a handler's context cancellation, as [context.Cause] reports them.
var (
	// ErrTaskCancelled: the dispatcher cancelled the assignment (its lease
	// was lost, for instance). The outcome is discarded.
	ErrTaskCancelled = errors.New("conveyor: the dispatcher cancelled the task")
	// ErrSoftTimeLimit: the task's soft time limit passed. A handler that
	// then returns its context's error fails with type "SoftTimeLimitExceeded".
	ErrSoftTimeLimit = errors.New("conveyor: soft time limit exceeded")
	// ErrDrainTimeout: the worker was draining and the grace period ended
	// before the handler returned. The outcome is discarded and the task
	// goes back to its queue.
	ErrDrainTimeout = errors.New("conveyor: drain grace period over")
	// ErrStreamLost: the worker stream that brought the task broke; the
	// dispatcher has already put the task back in its queue.
	ErrStreamLost = errors.New("conveyor: worker stream lost")
)

// RPCError is the error of a gRPC call that did not return OK. It carries
// the status whole: [status.FromError], [status.Code] and [Code] see it.
type RPCError struct {
	// Op names the call, e.g. "SubmitTask".
	Op     string
	status *status.Status
	err    error
}

func newRPCError(op string, err error) *RPCError {
	st, ok := status.FromError(err)
	if !ok {
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			st = status.New(codes.DeadlineExceeded, err.Error())
		case errors.Is(err, context.Canceled):
			st = status.New(codes.Canceled, err.Error())
		}
	}
	return &RPCError{Op: op, status: st, err: err}
}

// wrapRPC returns nil for a nil err, else an *RPCError.
func wrapRPC(op string, err error) error {
	if err == nil {
		return nil
	}
	return newRPCError(op, err)
}

func (e *RPCError) Error() string {
	return fmt.Sprintf("conveyor: %s: %s: %s", e.Op, e.status.Code(), e.status.Message())
}

// GRPCStatus returns the call's status (for [status.FromError]).
func (e *RPCError) GRPCStatus() *status.Status { return e.status }

// Code is the status code.
func (e *RPCError) Code() codes.Code { return e.status.Code() }

// Unwrap returns the error the call returned.
func (e *RPCError) Unwrap() error { return e.err }

// Timeout reports whether the call ended with DEADLINE_EXCEEDED.
func (e *RPCError) Timeout() bool { return e.status.Code() == codes.DeadlineExceeded }

// Is makes a DEADLINE_EXCEEDED error match [ErrTimeout] and
// [context.DeadlineExceeded], a CANCELLED one [context.Canceled], an
// UNAUTHENTICATED one [ErrUnauthenticated] and a PERMISSION_DENIED one
// [ErrPermissionDenied].
func (e *RPCError) Is(target error) bool {
	switch e.status.Code() {
	case codes.DeadlineExceeded:
		return target == ErrTimeout || target == context.DeadlineExceeded
	case codes.Canceled:
		return target == context.Canceled
	case codes.Unauthenticated:
		return target == ErrUnauthenticated
	case codes.PermissionDenied:
		return target == ErrPermissionDenied
	}
	return false
}

// Message is the status message, as the server wrote it (for
// PERMISSION_DENIED, which permission is missing in which namespace).
func (e *RPCError) Message() string { return e.status.Message() }

// Code returns the gRPC status code carried by err: OK for nil,
// DEADLINE_EXCEEDED and CANCELLED for context errors, UNKNOWN for errors
// that carry no status.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if st, ok := status.FromError(err); ok {
		return st.Code()
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	return codes.Unknown
}

// IsTimeout reports whether err says a wait's timeout or deadline passed.
func IsTimeout(err error) bool { return errors.Is(err, ErrTimeout) }

// ProtocolError says the server broke the protocol, e.g. a response without
// its task or a worker stream whose first message is not Welcome.
type ProtocolError struct{ Message string }

func (e *ProtocolError) Error() string { return "conveyor: protocol error: " + e.Message }

// TaskFailedError is returned by [Client.Result] for a task that ended
// FAILED: the error its handler reported on the last attempt. For a
// workflow that ended FAILED ([WorkflowHandle.Get]), it is the error of the
// node whose failure failed the workflow first, and WorkflowID is set.
type TaskFailedError struct {
	TaskID string
	// Type is the error type or class name, e.g. "ValueError".
	Type string
	// Message is the human-readable message.
	Message string
	// Traceback is the stack trace text, possibly empty.
	Traceback string
	// Retryable is what the handler said about retrying the last attempt.
	Retryable bool
	// Reason is set when the platform, not the handler, failed the task:
	// FAILURE_REASON_DEPENDENCY_FAILED for a workflow node that did not run
	// because a node it depends on failed or expired.
	Reason FailureReason
	// CauseTaskID, for FAILURE_REASON_DEPENDENCY_FAILED, is the parent node
	// whose failure failed this one (follow it for the cause chain).
	CauseTaskID string
	// WorkflowID is the failed workflow, for the error of a workflow.
	WorkflowID string
}

// FailureReason says why the platform failed a task (UNSPECIFIED when its
// handler reported the error).
type FailureReason = conveyorv1.FailureReason

// ReasonDependencyFailed is the reason of a workflow node that did not run
// because a node it depends on failed or expired.
const ReasonDependencyFailed = conveyorv1.FailureReason_FAILURE_REASON_DEPENDENCY_FAILED

// taskFailed is the error of a FAILED task.
func taskFailed(task *TaskInfo) *TaskFailedError {
	e := task.GetError()
	return &TaskFailedError{
		TaskID:      task.GetId(),
		Type:        e.GetType(),
		Message:     e.GetMessage(),
		Traceback:   e.GetTraceback(),
		Retryable:   e.GetRetryable(),
		Reason:      e.GetReason(),
		CauseTaskID: e.GetCauseTaskId(),
	}
}

func (e *TaskFailedError) Error() string {
	var b strings.Builder
	if e.WorkflowID != "" {
		fmt.Fprintf(&b, "conveyor: workflow %s failed: task %s failed: %s: %s", e.WorkflowID, e.TaskID, e.Type, e.Message)
	} else {
		fmt.Fprintf(&b, "conveyor: task %s failed: %s: %s", e.TaskID, e.Type, e.Message)
	}
	if e.CauseTaskID != "" {
		fmt.Fprintf(&b, " (caused by task %s)", e.CauseTaskID)
	}
	return b.String()
}

// TaskNotSucceededError is returned by [Client.Result] for a task that ended
// without a result: CANCELLED or EXPIRED. For a workflow that was cancelled
// ([WorkflowHandle.Get]), WorkflowID is set, TaskID is empty and State is
// CANCELLED.
type TaskNotSucceededError struct {
	TaskID string
	State  TaskState
	// WorkflowID is the cancelled workflow, for the error of a workflow.
	WorkflowID string
}

func (e *TaskNotSucceededError) Error() string {
	if e.TaskID == "" && e.WorkflowID != "" {
		return fmt.Sprintf("conveyor: workflow %s did not succeed: it was %s", e.WorkflowID, e.State)
	}
	return fmt.Sprintf("conveyor: task %s did not succeed: it ended %s", e.TaskID, e.State)
}

// TaskError is a handler failure with an explicit type, in the vocabulary
// shared by every language ("ValueError", "KeyError", ...). Its Error() is
// the message alone, as a Python exception's str() is.
type TaskError struct {
	// Type is reported as the TaskError type, e.g. "ValueError".
	Type string
	// Message is reported as the message.
	Message string
	// Traceback is reported as the traceback; NewTaskError fills it with the
	// stack of the goroutine that called it.
	Traceback string
}

// NewTaskError returns a retryable failure of type typ, with the calling
// goroutine's stack as its traceback. Wrap it in [NonRetryable] to make it
// final.
func NewTaskError(typ, msg string) *TaskError {
	return &TaskError{Type: typ, Message: msg, Traceback: string(debug.Stack())}
}

func (e *TaskError) Error() string { return e.Message }

// ErrorType returns e.Type.
func (e *TaskError) ErrorType() string { return e.Type }

// NonRetryable marks err final: the task fails at once, whatever its retry
// policy allows. The error's type, message and traceback are err's. Returns
// nil for a nil err.
func NonRetryable(err error) error {
	if err == nil {
		return nil
	}
	return &nonRetryableError{err: err}
}

type nonRetryableError struct{ err error }

func (e *nonRetryableError) Error() string     { return e.err.Error() }
func (e *nonRetryableError) Unwrap() error     { return e.err }
func (e *nonRetryableError) Retryable() bool   { return false }
func (e *nonRetryableError) ErrorType() string { return ErrorType(e.err) }

// IsRetryable reports whether a handler error may be retried under the
// task's policy: true unless an error in its chain has a Retryable() method
// that says false (as [NonRetryable] errors do).
func IsRetryable(err error) bool {
	var r interface{ Retryable() bool }
	if errors.As(err, &r) {
		return r.Retryable()
	}
	return true
}

// ErrorType is the type name reported for a handler error: that of the
// first error in its chain with an ErrorType() string method, else the Go
// type name of err ("*strconv.NumError", "*errors.errorString").
func ErrorType(err error) string {
	var typed interface{ ErrorType() string }
	if errors.As(err, &typed) {
		if name := typed.ErrorType(); name != "" {
			return name
		}
	}
	return fmt.Sprintf("%T", err)
}

// traceback is the first non-empty TaskError traceback in err's chain.
func traceback(err error) string {
	for err != nil {
		if te, ok := err.(*TaskError); ok && te.Traceback != "" {
			return te.Traceback
		}
		err = errors.Unwrap(err)
	}
	return ""
}

// RetryAfter asks for the task to run again after delay instead of after its
// retry policy's backoff (Celery's `self.retry(countdown=...)`); the attempt
// still counts against the policy's max retries, and the task fails with
// err once they are spent. err gives the reported type and message; nil
// reports type "Retry". Return it from a handler:
//
//	return nil, conveyor.RetryAfter(30*time.Second, err)
func RetryAfter(delay time.Duration, err error) error {
	if err == nil {
		err = NewTaskError("Retry", fmt.Sprintf("retry requested in %s", delay))
	}
	return &retryAfterError{err: err, delay: max(delay, 0)}
}

type retryAfterError struct {
	err   error
	delay time.Duration
}

func (e *retryAfterError) Error() string             { return e.err.Error() }
func (e *retryAfterError) Unwrap() error             { return e.err }
func (e *retryAfterError) Retryable() bool           { return true }
func (e *retryAfterError) ErrorType() string         { return ErrorType(e.err) }
func (e *retryAfterError) RetryDelay() time.Duration { return e.delay }

// retryDelay is the delay asked for by a [RetryAfter] error in err's chain.
func retryDelay(err error) (time.Duration, bool) {
	var r interface{ RetryDelay() time.Duration }
	if errors.As(err, &r) {
		return r.RetryDelay(), true
	}
	return 0, false
}
