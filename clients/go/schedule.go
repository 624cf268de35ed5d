package conveyor

import (
	"context"
	"fmt"
	"time"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
)

// Schedule is a periodic schedule (Celery's beat entry): a task submitted at
// every run of its rule. Build one with [NewSchedule]; the generated type's
// other fields (StartAt, EndAt, Jitter, CatchUp) may be set before creating it.
type Schedule = conveyorv1.Schedule

// ScheduleRun is one run of a schedule: when it fired and the task it submitted.
type ScheduleRun = conveyorv1.ScheduleRun

// ScheduleRule says when a schedule fires: [Every] or [Cron].
type ScheduleRule func(*Schedule)

// Every fires every interval (at least 1 s).
func Every(interval time.Duration) ScheduleRule {
	return func(s *Schedule) {
		s.Rule = &conveyorv1.Schedule_Interval{Interval: &conveyorv1.IntervalRule{Every: durationToProto(interval)}}
	}
}

// Cron fires on a five-field cron expression ("*/5 * * * *") in an IANA
// time zone ("Europe/Paris"; "" is UTC).
func Cron(expression, timeZone string) ScheduleRule {
	return func(s *Schedule) {
		s.Rule = &conveyorv1.Schedule_Cron{Cron: &conveyorv1.CronRule{Expression: expression, TimeZone: timeZone}}
	}
}

// NewSchedule returns schedule id (1..200 characters of [A-Za-z0-9_.:/-])
// that submits the task name with opts (arguments and options, as for
// [Client.Submit]; no idempotency key: the scheduler sets one per run) at
// every run of rule.
func NewSchedule(id string, rule ScheduleRule, name string, opts ...Option) (*Schedule, error) {
	spec, err := NewRequest(name, opts...).Spec()
	if err != nil {
		return nil, err
	}
	s := &Schedule{Id: id, Task: spec}
	if rule == nil {
		return nil, fmt.Errorf("conveyor: schedule %q has no rule: pass conveyor.Every(d) or conveyor.Cron(expr, tz)", id)
	}
	rule(s)
	return s, nil
}

// CreateSchedule creates s and returns it as stored (with its next run).
// ALREADY_EXISTS when its id is in use: update it, or delete it first.
func (c *Client) CreateSchedule(ctx context.Context, s *Schedule) (*Schedule, error) {
	resp, err := c.scheduling.CreateSchedule(ctx, &conveyorv1.CreateScheduleRequest{Schedule: s, Namespace: c.namespace})
	if err != nil {
		return nil, wrapRPC("CreateSchedule", err)
	}
	return resp.GetSchedule(), nil
}

// GetSchedule returns schedule id; NOT_FOUND when there is none.
func (c *Client) GetSchedule(ctx context.Context, id string) (*Schedule, error) {
	resp, err := retryCall(ctx, c.retry, true, func(ctx context.Context) (*conveyorv1.GetScheduleResponse, error) {
		return c.scheduling.GetSchedule(ctx, &conveyorv1.GetScheduleRequest{Id: id, Namespace: c.namespace})
	})
	if err != nil {
		return nil, wrapRPC("GetSchedule", err)
	}
	return resp.GetSchedule(), nil
}

// ListSchedules returns every schedule.
func (c *Client) ListSchedules(ctx context.Context) ([]*Schedule, error) {
	resp, err := retryCall(ctx, c.retry, true, func(ctx context.Context) (*conveyorv1.ListSchedulesResponse, error) {
		return c.scheduling.ListSchedules(ctx, &conveyorv1.ListSchedulesRequest{Namespace: c.namespace})
	})
	if err != nil {
		return nil, wrapRPC("ListSchedules", err)
	}
	return resp.GetSchedules(), nil
}

// UpdateSchedule replaces the definition of the schedule named by s's id
// and returns it as stored.
func (c *Client) UpdateSchedule(ctx context.Context, s *Schedule) (*Schedule, error) {
	resp, err := c.scheduling.UpdateSchedule(ctx, &conveyorv1.UpdateScheduleRequest{Schedule: s, Namespace: c.namespace})
	if err != nil {
		return nil, wrapRPC("UpdateSchedule", err)
	}
	return resp.GetSchedule(), nil
}

// DeleteSchedule deletes schedule id; tasks it already submitted stay.
func (c *Client) DeleteSchedule(ctx context.Context, id string) error {
	_, err := c.scheduling.DeleteSchedule(ctx, &conveyorv1.DeleteScheduleRequest{Id: id, Namespace: c.namespace})
	return wrapRPC("DeleteSchedule", err)
}

// PauseSchedule stops schedule id firing until [Client.ResumeSchedule].
func (c *Client) PauseSchedule(ctx context.Context, id string) (*Schedule, error) {
	resp, err := c.scheduling.PauseSchedule(ctx, &conveyorv1.PauseScheduleRequest{Id: id, Namespace: c.namespace})
	if err != nil {
		return nil, wrapRPC("PauseSchedule", err)
	}
	return resp.GetSchedule(), nil
}

// ResumeSchedule lets a paused schedule fire again.
func (c *Client) ResumeSchedule(ctx context.Context, id string) (*Schedule, error) {
	resp, err := c.scheduling.ResumeSchedule(ctx, &conveyorv1.ResumeScheduleRequest{Id: id, Namespace: c.namespace})
	if err != nil {
		return nil, wrapRPC("ResumeSchedule", err)
	}
	return resp.GetSchedule(), nil
}

// TriggerSchedule runs schedule id now, outside its rule, and returns the run.
func (c *Client) TriggerSchedule(ctx context.Context, id string) (*ScheduleRun, error) {
	resp, err := c.scheduling.TriggerSchedule(ctx, &conveyorv1.TriggerScheduleRequest{Id: id, Namespace: c.namespace})
	if err != nil {
		return nil, wrapRPC("TriggerSchedule", err)
	}
	return resp.GetRun(), nil
}

// ScheduleRuns returns the latest runs of schedule id (at most 100).
func (c *Client) ScheduleRuns(ctx context.Context, id string) ([]*ScheduleRun, error) {
	resp, err := retryCall(ctx, c.retry, true, func(ctx context.Context) (*conveyorv1.ListScheduleRunsResponse, error) {
		return c.scheduling.ListScheduleRuns(ctx, &conveyorv1.ListScheduleRunsRequest{Id: id, Namespace: c.namespace})
	})
	if err != nil {
		return nil, wrapRPC("ListScheduleRuns", err)
	}
	return resp.GetRuns(), nil
}
