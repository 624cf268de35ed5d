package conveyor

import (
	"fmt"
	"time"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Option sets an argument or an option of a task to submit.
type Option func(*specBuilder)

// specBuilder accumulates a TaskSpec and the first encoding error.
type specBuilder struct {
	spec *conveyorv1.TaskSpec
	err  error
	// workflowName is set by WithWorkflowName (workflows only).
	workflowName string
}

func (b *specBuilder) options() *conveyorv1.TaskOptions {
	if b.spec.Options == nil {
		b.spec.Options = &conveyorv1.TaskOptions{}
	}
	return b.spec.Options
}

func (b *specBuilder) encode(what string, value any) *Payload {
	p, err := EncodeJSON(value)
	if err != nil {
		if b.err == nil {
			b.err = fmt.Errorf("conveyor: cannot encode %s of task %q as json: %w", what, b.spec.GetName(), err)
		}
		return &Payload{ContentType: JSONContentType}
	}
	return p
}

func (b *specBuilder) addArg(value any) {
	p := b.encode(fmt.Sprintf("positional argument %d", len(b.spec.Args)), value)
	b.spec.Args = append(b.spec.Args, p)
}

func (b *specBuilder) setKwarg(name string, value any) {
	p := b.encode(fmt.Sprintf("named argument %q", name), value)
	if b.spec.Kwargs == nil {
		b.spec.Kwargs = map[string]*Payload{}
	}
	b.spec.Kwargs[name] = p
}

// Args appends positional arguments, each encoded as one JSON value (a
// *Payload is sent as it is).
func Args(values ...any) Option {
	return func(b *specBuilder) {
		for _, v := range values {
			b.addArg(v)
		}
	}
}

// Kwarg sets the named argument name, encoded as JSON.
func Kwarg(name string, value any) Option {
	return func(b *specBuilder) { b.setKwarg(name, value) }
}

// Kwargs sets named arguments, each encoded as JSON.
func Kwargs(values map[string]any) Option {
	return func(b *specBuilder) {
		for name, v := range values {
			b.setKwarg(name, v)
		}
	}
}

// WithQueue routes the task to queue (the platform default is "default").
func WithQueue(queue string) Option {
	return func(b *specBuilder) { b.options().Queue = queue }
}

// WithPriority sets the priority within the queue, 0 (lowest) to 9 (highest).
func WithPriority(priority uint32) Option {
	return func(b *specBuilder) { b.options().Priority = priority }
}

// WithCountdown runs the task no earlier than d after submission. It
// replaces any [WithETA]: the two are exclusive.
func WithCountdown(d time.Duration) Option {
	return func(b *specBuilder) {
		o := b.options()
		o.Eta = nil
		o.Countdown = durationToProto(d)
	}
}

// WithETA runs the task no earlier than at. It replaces any
// [WithCountdown]: the two are exclusive.
func WithETA(at time.Time) Option {
	return func(b *specBuilder) {
		o := b.options()
		o.Countdown = nil
		o.Eta = timestamppb.New(at)
	}
}

// WithExpires makes a task not started by at EXPIRED; it never runs.
func WithExpires(at time.Time) Option {
	return func(b *specBuilder) { b.options().Expires = timestamppb.New(at) }
}

// RetryPolicy says how failed attempts are retried. Zero durations and
// factor take the platform defaults (1 s base, factor 2, 10 min max).
type RetryPolicy struct {
	// MaxRetries is the number of retries after the first attempt.
	MaxRetries    uint32
	BackoffBase   time.Duration
	BackoffFactor float64
	BackoffMax    time.Duration
	// Jitter draws each delay uniformly from [0, delay].
	Jitter bool
}

func (p RetryPolicy) proto() *conveyorv1.RetryPolicy {
	out := &conveyorv1.RetryPolicy{
		MaxRetries:    p.MaxRetries,
		BackoffFactor: p.BackoffFactor,
		Jitter:        p.Jitter,
	}
	if p.BackoffBase > 0 {
		out.BackoffBase = durationToProto(p.BackoffBase)
	}
	if p.BackoffMax > 0 {
		out.BackoffMax = durationToProto(p.BackoffMax)
	}
	return out
}

// WithMaxRetries allows n retries after the first attempt, keeping the rest
// of any policy set by [WithRetryPolicy] (else the platform's backoff).
func WithMaxRetries(n uint32) Option {
	return func(b *specBuilder) {
		o := b.options()
		if o.Retry == nil {
			o.Retry = &conveyorv1.RetryPolicy{}
		}
		o.Retry.MaxRetries = n
	}
}

// WithRetryPolicy sets the whole retry policy.
func WithRetryPolicy(p RetryPolicy) Option {
	return func(b *specBuilder) { b.options().Retry = p.proto() }
}

// WithSoftTimeLimit asks the worker to cancel the handler's context after d.
func WithSoftTimeLimit(d time.Duration) Option {
	return func(b *specBuilder) { b.options().SoftTimeLimit = durationToProto(d) }
}

// WithHardTimeLimit sets the hard time limit passed to the worker.
func WithHardTimeLimit(d time.Duration) Option {
	return func(b *specBuilder) { b.options().HardTimeLimit = durationToProto(d) }
}

// WithRateLimit caps how often tasks of this name start, in Celery's syntax:
// "10/s", "100/m" or "5/h" (a positive number per second, minute or hour).
// The limit holds across all workers; a task over the rate waits (SCHEDULED)
// for its slot and is never failed or dropped. Tasks sharing a bucket (the
// name, or the name and [WithRateLimitKey]) should share a rate.
func WithRateLimit(rate string) Option {
	return func(b *specBuilder) { b.options().RateLimit = rate }
}

// WithRateLimitKey splits the rate limit of [WithRateLimit] by key: tasks of
// the same name sharing key share one bucket; without a key every task of the
// name shares it. The server rejects a key without a rate (INVALID_ARGUMENT).
func WithRateLimitKey(key string) Option {
	return func(b *specBuilder) { b.options().RateLimitKey = key }
}

// WithConcurrencyLimit lets at most limit tasks sharing key run at once.
// With [WithConcurrencyKeys] too, this key counts as one of the task's keys
// (the first).
func WithConcurrencyLimit(key string, limit uint32) Option {
	return func(b *specBuilder) {
		o := b.options()
		o.ConcurrencyKey = key
		o.ConcurrencyLimit = limit
	}
}

// ConcurrencyKey is one concurrency key of a task and the most tasks holding
// it at once (at least 1). Tasks sharing a key should give it the same limit.
type ConcurrencyKey struct {
	Key   string
	Limit uint32
}

// WithConcurrencyKeys makes the task need a permit of every one of keys at
// once: the server leases it only when all are free, takes them together and
// gives them all back when the attempt ends, so tasks sharing keys cannot
// deadlock. For the dining philosophers, forks are keys with limit 1:
//
//	conveyor.WithConcurrencyKeys(
//		conveyor.ConcurrencyKey{Key: "fork:1", Limit: 1},
//		conveyor.ConcurrencyKey{Key: "fork:2", Limit: 1})
//
// It is variadic so that one call says everything a task needs, and each
// call appends, so options built apart (a helper's key, a caller's) combine.
// The server accepts at most 8 keys in all, counting [WithConcurrencyLimit]'s,
// each named once, each with a limit of at least 1; it rejects anything else
// with INVALID_ARGUMENT naming the field (e.g.
// "task.options.concurrency_keys[1].limit"). The client does not check.
func WithConcurrencyKeys(keys ...ConcurrencyKey) Option {
	return func(b *specBuilder) {
		o := b.options()
		for _, k := range keys {
			o.ConcurrencyKeys = append(o.ConcurrencyKeys, &conveyorv1.ConcurrencyKey{Key: k.Key, Limit: k.Limit})
		}
	}
}

// WithIdempotencyKey makes a second submit with the same key, within the
// idempotency window, return the first task's id and create nothing.
func WithIdempotencyKey(key string) Option {
	return func(b *specBuilder) { b.spec.IdempotencyKey = key }
}

// WithHeader adds a header passed to the worker untouched (trace context...).
func WithHeader(name, value string) Option {
	return func(b *specBuilder) {
		o := b.options()
		if o.Headers == nil {
			o.Headers = map[string]string{}
		}
		o.Headers[name] = value
	}
}

// WithHeaders adds headers passed to the worker untouched.
func WithHeaders(headers map[string]string) Option {
	return func(b *specBuilder) {
		for k, v := range headers {
			WithHeader(k, v)(b)
		}
	}
}

// WithTraceContext sets the task's W3C trace context (a traceparent such as
// "00-<32 hex>-<16 hex>-01" and an optional tracestate), which the worker's
// span of each attempt continues. Without it, a submit made while
// OpenTelemetry tracing is configured sends the context of its own
// "publish" span.
func WithTraceContext(traceparent, tracestate string) Option {
	return func(b *specBuilder) {
		b.spec.TraceContext = &conveyorv1.TraceContext{Traceparent: traceparent, Tracestate: tracestate}
	}
}

// WithResultTTL keeps the outcome for ttl after the task finishes.
func WithResultTTL(ttl time.Duration) Option {
	return func(b *specBuilder) { b.options().ResultTtl = durationToProto(ttl) }
}

// TaskRequest is one task to submit with [Client.SubmitMany].
type TaskRequest struct {
	// Name is the registered task name.
	Name string
	// Args are the positional arguments, each encoded as JSON.
	Args []any
	// Kwargs are the named arguments, each encoded as JSON.
	Kwargs map[string]any
	// Options are applied after Args and Kwargs (an [Args] option appends).
	Options []Option
}

// NewRequest returns the request for task name with opts.
func NewRequest(name string, opts ...Option) TaskRequest {
	return TaskRequest{Name: name, Options: opts}
}

// Spec encodes the request as the protobuf TaskSpec, or returns the first
// argument that failed to encode.
func (r TaskRequest) Spec() (*conveyorv1.TaskSpec, error) {
	b := r.build()
	if b.err != nil {
		return nil, b.err
	}
	if b.workflowName != "" {
		return nil, fmt.Errorf("conveyor: task %q: WithWorkflowName applies to a whole workflow (SubmitWorkflow), not to a task", r.Name)
	}
	return b.spec, nil
}

// build applies the request's arguments and options.
func (r TaskRequest) build() *specBuilder {
	b := &specBuilder{spec: &conveyorv1.TaskSpec{Name: r.Name}}
	for _, v := range r.Args {
		b.addArg(v)
	}
	for name, v := range r.Kwargs {
		b.setKwarg(name, v)
	}
	for _, opt := range r.Options {
		if opt != nil {
			opt(b)
		}
	}
	return b
}
