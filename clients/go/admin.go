package conveyor

import (
	"context"
	"iter"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
)

// WorkerInfo is a connected worker session as ListWorkers reports it.
type WorkerInfo = conveyorv1.WorkerInfo

// Replay queues a FAILED task (a dead letter) again under the same id, with
// its retry count reset, and returns its new state. A task in any other
// state gives FAILED_PRECONDITION.
func (c *Client) Replay(ctx context.Context, id string) (TaskState, error) {
	resp, err := c.submission.ReplayTask(ctx, &conveyorv1.ReplayTaskRequest{TaskId: id, Namespace: c.namespace})
	if err != nil {
		return 0, wrapRPC("ReplayTask", err)
	}
	return resp.GetState(), nil
}

// Forget deletes a finished task and its outcome now, before its result
// TTL; later reads of the id give NOT_FOUND. An unfinished task gives
// FAILED_PRECONDITION.
func (c *Client) Forget(ctx context.Context, id string) error {
	_, err := c.results.ForgetTask(ctx, &conveyorv1.ForgetTaskRequest{TaskId: id, Namespace: c.namespace})
	return wrapRPC("ForgetTask", err)
}

// DeadLetterPage lists one page of the tasks that failed for good (retries
// exhausted or not retryable), oldest first: at most pageSize tasks (0
// means the server's default, 100; at most 1000) from pageToken ("" for the
// first page). The returned token is "" after the last page.
func (c *Client) DeadLetterPage(ctx context.Context, pageSize int, pageToken string) ([]*TaskInfo, string, error) {
	resp, err := retryCall(ctx, c.retry, true, func(ctx context.Context) (*conveyorv1.ListDeadLettersResponse, error) {
		return c.results.ListDeadLetters(ctx, &conveyorv1.ListDeadLettersRequest{
			PageSize:  uint32(max(pageSize, 0)),
			PageToken: pageToken,
			Namespace: c.namespace,
		})
	})
	if err != nil {
		return nil, "", wrapRPC("ListDeadLetters", err)
	}
	return resp.GetTasks(), resp.GetNextPageToken(), nil
}

// DeadLetters iterates over every dead letter, oldest first, a page at a
// time; it stops after yielding an error.
//
//	for task, err := range c.DeadLetters(ctx) { ... c.Replay(ctx, task.GetId()) }
func (c *Client) DeadLetters(ctx context.Context) iter.Seq2[*TaskInfo, error] {
	return func(yield func(*TaskInfo, error) bool) {
		token := ""
		for {
			tasks, next, err := c.DeadLetterPage(ctx, 0, token)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, t := range tasks {
				if !yield(t, nil) {
					return
				}
			}
			if next == "" {
				return
			}
			token = next
		}
	}
}

// PauseQueue stops the dispatchers handing out queue's tasks until
// [Client.ResumeQueue]; submissions are still accepted and running tasks
// finish.
func (c *Client) PauseQueue(ctx context.Context, queue string) error {
	_, err := retryCall(ctx, c.retry, true, func(ctx context.Context) (*conveyorv1.PauseQueueResponse, error) {
		return c.dispatch.PauseQueue(ctx, &conveyorv1.PauseQueueRequest{Queue: queue, Namespace: c.namespace})
	})
	return wrapRPC("PauseQueue", err)
}

// ResumeQueue hands out a paused queue's tasks again.
func (c *Client) ResumeQueue(ctx context.Context, queue string) error {
	_, err := retryCall(ctx, c.retry, true, func(ctx context.Context) (*conveyorv1.ResumeQueueResponse, error) {
		return c.dispatch.ResumeQueue(ctx, &conveyorv1.ResumeQueueRequest{Queue: queue, Namespace: c.namespace})
	})
	return wrapRPC("ResumeQueue", err)
}

// QueueInfo is one queue as ListQueues reports it: ready tasks per
// priority and per task name, whether paused, its consumers.
type QueueInfo = conveyorv1.QueueInfo

// Queues lists the client's namespace's queues: those with ready tasks,
// paused, or consumed by a worker session (of any dispatch replica).
func (c *Client) Queues(ctx context.Context) ([]*QueueInfo, error) {
	resp, err := retryCall(ctx, c.retry, true, func(ctx context.Context) (*conveyorv1.ListQueuesResponse, error) {
		return c.dispatch.ListQueues(ctx, &conveyorv1.ListQueuesRequest{Namespace: c.namespace})
	})
	if err != nil {
		return nil, wrapRPC("ListQueues", err)
	}
	return resp.GetQueues(), nil
}

// Workers lists the worker sessions of every dispatch replica (the other
// replicas' as of their last announcement, every 2 s).
func (c *Client) Workers(ctx context.Context) ([]*WorkerInfo, error) {
	resp, err := retryCall(ctx, c.retry, true, func(ctx context.Context) (*conveyorv1.ListWorkersResponse, error) {
		return c.dispatch.ListWorkers(ctx, &conveyorv1.ListWorkersRequest{Namespace: c.namespace})
	})
	if err != nil {
		return nil, wrapRPC("ListWorkers", err)
	}
	return resp.GetWorkers(), nil
}

// DispatchClient is the generated client, for calls this type does not wrap.
func (c *Client) DispatchClient() conveyorv1.DispatchServiceClient { return c.dispatch }

// SchedulingClient is the generated client, for calls this type does not wrap.
func (c *Client) SchedulingClient() conveyorv1.SchedulingServiceClient { return c.scheduling }
