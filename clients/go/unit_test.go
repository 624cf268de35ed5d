package conveyor

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestBackoffDoublesFrom100msTo5s(t *testing.T) {
	b := newBackoff(DefaultMinBackoff, DefaultMaxBackoff)
	var ceilings []time.Duration
	for range 9 {
		c := b.ceiling()
		ceilings = append(ceilings, c)
		d := b.next()
		if d < c/2 || d > c {
			t.Fatalf("delay %s outside [%s, %s]", d, c/2, c)
		}
	}
	want := "[100ms 200ms 400ms 800ms 1.6s 3.2s 5s 5s 5s]"
	if fmt.Sprint(ceilings) != want {
		t.Fatalf("ceilings %v, want %s", ceilings, want)
	}
	b.reset()
	if b.ceiling() != DefaultMinBackoff {
		t.Fatal("reset does not start over")
	}
	distinct := map[time.Duration]bool{}
	for range 20 {
		b.reset()
		distinct[b.next()] = true
	}
	if len(distinct) < 2 {
		t.Fatal("no jitter")
	}
}

func TestErrorTypeAndRetryability(t *testing.T) {
	_, parseErr := strconv.Atoi("x")
	typed := NewTaskError("ValueError", "boom")
	cases := []struct {
		err       error
		typ       string
		retryable bool
	}{
		{errors.New("x"), "*errors.errorString", true},
		{parseErr, "*strconv.NumError", true},
		{typed, "ValueError", true},
		{NonRetryable(typed), "ValueError", false},
		{NonRetryable(parseErr), "*strconv.NumError", false},
		{fmt.Errorf("wrapped: %w", NonRetryable(typed)), "ValueError", false},
		{fmt.Errorf("plain wrap: %w", errors.New("x")), "*fmt.wrapError", true},
	}
	for _, c := range cases {
		if got := ErrorType(c.err); got != c.typ {
			t.Errorf("ErrorType(%v) = %s, want %s", c.err, got, c.typ)
		}
		if got := IsRetryable(c.err); got != c.retryable {
			t.Errorf("IsRetryable(%v) = %v", c.err, got)
		}
	}
	if NonRetryable(nil) != nil {
		t.Error("NonRetryable(nil) is not nil")
	}
	if typed.Error() != "boom" || !strings.Contains(typed.Traceback, "TestErrorTypeAndRetryability") {
		t.Errorf("TaskError %q traceback:\n%s", typed.Error(), typed.Traceback)
	}
	if tb := traceback(fmt.Errorf("w: %w", NonRetryable(typed))); tb != typed.Traceback {
		t.Error("traceback not found through wrappers")
	}
}

func TestHandlerFailure(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	failure := handlerFailure(ctx, NonRetryable(NewTaskError("ValueError", "bad")), 0)
	if failure.GetType() != "ValueError" || failure.GetMessage() != "bad" || failure.GetRetryable() || failure.GetTraceback() == "" {
		t.Fatalf("failure %v", failure)
	}
	plain := handlerFailure(ctx, errors.New("plain"), 0)
	if plain.GetType() != "*errors.errorString" || !plain.GetRetryable() || !strings.Contains(plain.GetTraceback(), "goroutine") {
		t.Fatalf("plain %v", plain)
	}
	cancel(ErrSoftTimeLimit)
	soft := handlerFailure(ctx, ctx.Err(), 2*time.Second)
	if soft.GetType() != "SoftTimeLimitExceeded" || soft.GetMessage() != "soft time limit (2s) exceeded" {
		t.Fatalf("soft %v", soft)
	}
	other := handlerFailure(ctx, errors.New("unrelated"), time.Second)
	if other.GetType() != "*errors.errorString" {
		t.Fatalf("an unrelated error after the soft limit: %v", other)
	}
}

func TestHandlerPanicIsRecovered(t *testing.T) {
	task := TaskFromAssignment(&conveyorv1.Assignment{TaskId: "t"})
	result, failure, cause := call(context.Background(), func(context.Context, *Task) (any, error) {
		var m map[string]int
		m["x"] = 1 // nil map write
		return nil, nil
	}, task)
	if result != nil || failure.GetType() != "panic" || !strings.Contains(failure.GetMessage(), "nil map") ||
		!strings.Contains(failure.GetTraceback(), "TestHandlerPanicIsRecovered") {
		t.Fatalf("panic reported as %v", failure)
	}
	if cause == nil || !strings.Contains(cause.Error(), "panic: ") {
		t.Fatalf("the panic's error for the span: %v", cause)
	}
	result, failure, _ = call(context.Background(), func(context.Context, *Task) (any, error) {
		return &Payload{Data: []byte{1}, ContentType: "application/octet-stream"}, nil
	}, task)
	if failure != nil || result.GetContentType() != "application/octet-stream" {
		t.Fatalf("raw payload result: %v %v", result, failure)
	}
}

func TestRequestSpec(t *testing.T) {
	eta := time.Unix(1_700_000_000, 0)
	spec, err := NewRequest("add",
		Args(2, "x", []float64{1.5}),
		Kwarg("scale", map[string]int{"by": 3}),
		WithQueue("q"), WithPriority(7), WithCountdown(2500*time.Millisecond), WithExpires(eta),
		WithRetryPolicy(RetryPolicy{MaxRetries: 1, BackoffFactor: 3, Jitter: true}), WithMaxRetries(4),
		WithIdempotencyKey("k-1"), WithHeader("traceparent", "00-abc"), WithHeaders(map[string]string{"a": "b"}),
		WithResultTTL(time.Minute), WithSoftTimeLimit(5*time.Second), WithHardTimeLimit(9*time.Second),
		WithRateLimit("10/m"), WithRateLimitKey("api"), WithConcurrencyLimit("db", 2),
	).Spec()
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, a := range spec.GetArgs() {
		if a.GetContentType() != JSONContentType {
			t.Fatalf("content type %q", a.GetContentType())
		}
		args = append(args, string(a.GetData()))
	}
	if strings.Join(args, " ") != `2 "x" [1.5]` || string(spec.GetKwargs()["scale"].GetData()) != `{"by":3}` {
		t.Fatalf("args %v kwargs %v", args, spec.GetKwargs())
	}
	o := spec.GetOptions()
	r := o.GetRetry()
	if o.GetQueue() != "q" || o.GetPriority() != 7 || o.GetCountdown().AsDuration() != 2500*time.Millisecond ||
		o.GetEta() != nil || !o.GetExpires().AsTime().Equal(eta) || r.GetMaxRetries() != 4 || r.GetBackoffFactor() != 3 ||
		!r.GetJitter() || r.GetBackoffBase() != nil || spec.GetIdempotencyKey() != "k-1" ||
		o.GetHeaders()["traceparent"] != "00-abc" || o.GetHeaders()["a"] != "b" || o.GetResultTtl().AsDuration() != time.Minute ||
		o.GetSoftTimeLimit().AsDuration() != 5*time.Second || o.GetHardTimeLimit().AsDuration() != 9*time.Second ||
		o.GetRateLimit() != "10/m" || o.GetRateLimitKey() != "api" || o.GetConcurrencyKey() != "db" || o.GetConcurrencyLimit() != 2 {
		t.Fatalf("options %v", o)
	}
	keyed, _ := NewRequest("t", WithConcurrencyLimit("db", 2),
		WithConcurrencyKeys(ConcurrencyKey{Key: "fork:1", Limit: 1}, ConcurrencyKey{Key: "fork:2", Limit: 1}),
		WithConcurrencyKeys(ConcurrencyKey{Key: "x", Limit: 3})).Spec()
	var keys []string
	for _, k := range keyed.GetOptions().GetConcurrencyKeys() {
		keys = append(keys, fmt.Sprintf("%s=%d", k.GetKey(), k.GetLimit()))
	}
	if strings.Join(keys, " ") != "fork:1=1 fork:2=1 x=3" || keyed.GetOptions().GetConcurrencyKey() != "db" {
		t.Fatalf("concurrency keys %v of %v", keys, keyed.GetOptions())
	}
	withETA, _ := NewRequest("t", WithCountdown(time.Second), WithETA(eta)).Spec()
	if withETA.GetOptions().GetCountdown() != nil || withETA.GetOptions().GetEta() == nil {
		t.Fatal("eta does not replace countdown")
	}
	fields, _ := TaskRequest{Name: "t", Args: []any{1}, Kwargs: map[string]any{"k": true}, Options: []Option{Args(2)}}.Spec()
	if len(fields.GetArgs()) != 2 || string(fields.GetArgs()[1].GetData()) != "2" || string(fields.GetKwargs()["k"].GetData()) != "true" {
		t.Fatalf("fields %v", fields)
	}
	_, err = NewRequest("t", Args(1, make(chan int))).Spec()
	if err == nil || !strings.Contains(err.Error(), `positional argument 1 of task "t"`) {
		t.Fatalf("unencodable argument: %v", err)
	}
}

func TestPayloadDecoding(t *testing.T) {
	for ct, want := range map[string]bool{
		"": true, "application/json": true, "Application/JSON; charset=utf-8": true,
		"application/problem+json": true, "text/plain": false, "application/octet-stream": false,
	} {
		if IsJSON(ct) != want {
			t.Errorf("IsJSON(%q) != %v", ct, want)
		}
	}
	var v *int
	if err := DecodeJSON(nil, &v); err != nil || v != nil {
		t.Fatalf("nil payload: %v %v", v, err)
	}
	var n int
	if err := DecodeJSON(&Payload{Data: []byte("42")}, &n); err != nil || n != 42 {
		t.Fatalf("empty content type: %d %v", n, err)
	}
	if err := DecodeJSON(&Payload{Data: []byte("42"), ContentType: "application/msgpack"}, &n); err == nil {
		t.Fatal("msgpack decoded as json")
	}
	if durationFromProto(nil) != 0 || durationFromProto(durationpb.New(-time.Second)) != 0 ||
		durationFromProto(durationpb.New(1500*time.Millisecond)) != 1500*time.Millisecond {
		t.Fatal("durationFromProto")
	}
}

func TestTaskArguments(t *testing.T) {
	task := TaskFromAssignment(&conveyorv1.Assignment{
		TaskId: "id", Name: "add", Attempt: 2, MaxRetries: 5, LeaseToken: 77,
		Args: []*Payload{
			{Data: []byte("2"), ContentType: JSONContentType},
			{Data: []byte(`["a","b"]`)},
			{Data: []byte{1}, ContentType: "application/octet-stream"},
		},
		Kwargs:        map[string]*Payload{"scale": {Data: []byte("1.5")}},
		SoftTimeLimit: durationpb.New(3 * time.Second),
	})
	if task.ID != "id" || task.Attempt != 2 || task.MaxRetries != 5 || task.LeaseToken() != 77 ||
		task.SoftTimeLimit != 3*time.Second || task.NumArgs() != 3 || task.Headers == nil || !task.HasKwarg("scale") {
		t.Fatalf("task %+v", task)
	}
	var a int
	var list []string
	var scale float64
	if task.Arg(0, &a) != nil || a != 2 || task.Arg(1, &list) != nil || len(list) != 2 ||
		task.Kwarg("scale", &scale) != nil || scale != 1.5 {
		t.Fatal("decoding arguments")
	}
	var s string
	for _, err := range []error{task.Arg(0, &s), task.Arg(3, &a), task.Arg(2, &a), task.Kwarg("scale", &a), task.Kwarg("none", &a)} {
		if ErrorType(err) != ArgumentError || IsRetryable(err) {
			t.Errorf("%v: type %s retryable %v", err, ErrorType(err), IsRetryable(err))
		}
	}
	if err := task.Arg(3, &a); err.Error() != "missing positional argument 3 (got 3)" {
		t.Errorf("message %q", err)
	}
}

func TestCodesAndRPCErrors(t *testing.T) {
	if Code(nil) != codes.OK || Code(context.DeadlineExceeded) != codes.DeadlineExceeded ||
		Code(context.Canceled) != codes.Canceled || Code(errors.New("x")) != codes.Unknown {
		t.Fatal("Code of plain errors")
	}
	err := wrapRPC("WaitTask", status.Error(codes.DeadlineExceeded, "late"))
	if !IsTimeout(err) || !errors.Is(err, context.DeadlineExceeded) || Code(err) != codes.DeadlineExceeded ||
		err.Error() != "conveyor: WaitTask: DeadlineExceeded: late" {
		t.Fatalf("deadline error %v", err)
	}
	st, ok := status.FromError(fmt.Errorf("outer: %w", err))
	if !ok || st.Code() != codes.DeadlineExceeded {
		t.Fatal("status.FromError through a wrapper")
	}
	notFound := wrapRPC("GetTask", status.Error(codes.NotFound, "no task"))
	if IsTimeout(notFound) || Code(notFound) != codes.NotFound {
		t.Fatal("not found")
	}
	if Code(wrapRPC("x", context.Canceled)) != codes.Canceled || !errors.Is(wrapRPC("x", context.Canceled), context.Canceled) {
		t.Fatal("context cancellation")
	}
}

func TestParseAddr(t *testing.T) {
	for in, want := range map[string][2]string{
		"http://127.0.0.1:50051":  {"127.0.0.1:50051", "http"},
		"http://127.0.0.1:50051/": {"127.0.0.1:50051", "http"},
		"https://conveyor:443":    {"conveyor:443", "https"},
		"127.0.0.1:50051":         {"127.0.0.1:50051", ""},
		"dns:///conveyor:50051":   {"dns:///conveyor:50051", ""},
	} {
		target, scheme := parseAddr(in)
		if target != want[0] || scheme != want[1] {
			t.Errorf("parseAddr(%q) = %q, %q; want %q", in, target, scheme, want)
		}
	}
}

func TestSplitBatchesByCountAndBytes(t *testing.T) {
	spec := func(size int) *conveyorv1.TaskSpec {
		return &conveyorv1.TaskSpec{Name: "t", Args: []*conveyorv1.Payload{{Data: []byte(strings.Repeat("x", size))}}}
	}
	sizes := func(batches [][]*conveyorv1.TaskSpec) []int {
		var n []int
		for _, b := range batches {
			n = append(n, len(b))
		}
		return n
	}
	var small []*conveyorv1.TaskSpec
	for range 2500 {
		small = append(small, spec(1))
	}
	if got := sizes(splitBatches(small)); fmt.Sprint(got) != "[1000 1000 500]" {
		t.Fatalf("small: %v", got)
	}
	var big []*conveyorv1.TaskSpec
	for range 130 {
		big = append(big, spec(256*1024))
	}
	batches := splitBatches(big)
	if got := sizes(batches); fmt.Sprint(got) != "[63 63 4]" {
		t.Fatalf("256 KB tasks: %v", got)
	}
	var flat []*conveyorv1.TaskSpec
	for _, b := range batches {
		bytes := 0
		for _, s := range b {
			bytes += proto.Size(s) + 6
		}
		if bytes > MaxBatchBytes {
			t.Fatalf("a batch of %d bytes", bytes)
		}
		flat = append(flat, b...)
	}
	for i := range big {
		if flat[i] != big[i] {
			t.Fatalf("task %d out of place", i)
		}
	}
	// A task above the limit alone still travels, in its own call.
	if got := sizes(splitBatches([]*conveyorv1.TaskSpec{spec(1), spec(MaxBatchBytes), spec(1)})); fmt.Sprint(got) != "[1 1 1]" {
		t.Fatalf("huge: %v", got)
	}
	if got := splitBatches(nil); len(got) != 0 {
		t.Fatalf("empty: %v", got)
	}
}
