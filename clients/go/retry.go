package conveyor

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
	"google.golang.org/grpc/codes"
)

// CallRetry says how a [Client] repeats calls that failed with UNAVAILABLE
// (a server down or restarting, a connection being re-established on
// another address). Only calls that are safe to repeat are retried: reads
// (Get, Wait, Watch, dead letters, schedules and workers lists), pausing
// and resuming queues, and submissions whose tasks all carry an
// idempotency key (the client adds one to each task by default, so a
// repeated submission returns the first one's id and creates nothing).
type CallRetry struct {
	// Attempts is the most attempts per call, the first included; 1 turns
	// retries off. Default 6.
	Attempts int
	// MinBackoff and MaxBackoff bound the delay between attempts (doubling,
	// with jitter). Default 50 ms and 2 s: 6 attempts span about 1.5 s.
	MinBackoff, MaxBackoff time.Duration
	// NoDefaultIdempotencyKey stops the client from adding an idempotency
	// key to tasks submitted without one; their submissions are then not
	// retried.
	NoDefaultIdempotencyKey bool
}

// DefaultCallRetry is the retry policy of a new [Client].
var DefaultCallRetry = CallRetry{Attempts: 6, MinBackoff: 50 * time.Millisecond, MaxBackoff: 2 * time.Second}

// SetCallRetry replaces the client's retry policy (see [CallRetry]); zero
// fields take the defaults. Call it before sharing the client.
func (c *Client) SetCallRetry(r CallRetry) {
	if r.Attempts <= 0 {
		r.Attempts = DefaultCallRetry.Attempts
	}
	if r.MinBackoff <= 0 {
		r.MinBackoff = DefaultCallRetry.MinBackoff
	}
	if r.MaxBackoff <= 0 {
		r.MaxBackoff = DefaultCallRetry.MaxBackoff
	}
	c.retry = r
}

func (r CallRetry) attempts() int { return max(r.Attempts, 1) }

// retryCall runs call, and again after a backoff while it fails with
// UNAVAILABLE, safe is true, attempts remain and ctx is live.
func retryCall[T any](ctx context.Context, r CallRetry, safe bool, call func(context.Context) (T, error)) (T, error) {
	var bo *reconnectBackoff
	for attempt := 1; ; attempt++ {
		resp, err := call(ctx)
		if err == nil || !safe || Code(err) != codes.Unavailable || attempt >= r.attempts() || ctx.Err() != nil {
			return resp, err
		}
		if bo == nil {
			bo = newBackoff(r.MinBackoff, r.MaxBackoff)
		}
		if !sleepCtx(ctx, bo.next()) {
			return resp, err
		}
	}
}

// sleepCtx sleeps for d, or less when ctx ends (then it returns false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// addIdempotencyKey gives spec a random key unless it has one or the
// client's policy says not to.
func (c *Client) addIdempotencyKey(spec *conveyorv1.TaskSpec) {
	if spec.GetIdempotencyKey() != "" || c.retry.NoDefaultIdempotencyKey {
		return
	}
	spec.IdempotencyKey = "go-" + randomUUID()
}

// randomUUID is a version 4 UUID.
func randomUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics on failure)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
