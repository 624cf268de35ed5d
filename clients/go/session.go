package conveyor

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	// handshakeTimeout: how long the dispatcher has to answer Hello.
	handshakeTimeout = 10 * time.Second
	// closeTimeout: how long to wait, after closing our side, for the
	// dispatcher to close its side, so the last frames are delivered.
	closeTimeout = 5 * time.Second
	// maxOutcomesPerFrame: most outcomes in one ReportOutcomes frame.
	maxOutcomesPerFrame = 1024
	// defaultMaxCredits: credit limit when Welcome names none.
	defaultMaxCredits = 1024
)

type endKind int

const (
	// endStopped: local shutdown; running tasks finished or the grace passed.
	endStopped endKind = iota
	// endDrained: the dispatcher asked to drain and the session did.
	endDrained
	// endBroken: the stream failed or ended unasked.
	endBroken
)

type sessionEnd struct {
	kind endKind
	err  error
	// welcomed: Welcome arrived, i.e. the connection itself worked.
	welcomed bool
	// reason: why the dispatcher drained the session (endDrained).
	reason conveyorv1.DrainReason
}

type connectStream = grpc.BidiStreamingClient[conveyorv1.ConnectRequest, conveyorv1.ConnectResponse]

// runningTask is an assignment of this session whose runner has not finished.
type runningTask struct {
	token  uint64
	cancel context.CancelCauseFunc
	// cancelled: CancelAssignment arrived, the outcome will be dropped.
	cancelled bool
}

type inboundMessage struct {
	msg *conveyorv1.ConnectResponse
	err error
}

type session struct {
	rt       *workerRuntime
	epoch    uint64
	stream   connectStream
	inbound  chan inboundMessage
	recvDone chan struct{}
	// recvEnded: the inbound side delivered its final error or EOF.
	recvEnded bool
	running   map[string]*runningTask
	// outstanding: credits granted and not yet used by an assignment.
	outstanding int
	maxCredits  int
	draining    bool
	// drainReason: the reason of the dispatcher's last Drain.
	drainReason conveyorv1.DrainReason
	// stopping: the drain is the worker's own shutdown, so the worker
	// stops instead of reconnecting afterwards.
	stopping   bool
	deadline   time.Time
	drainTimer *time.Timer
}

// session opens one stream, says Hello, awaits Welcome and serves the
// stream until it ends.
func (rt *workerRuntime) session(ctx context.Context, epoch uint64) sessionEnd {
	streamCtx, cancelStream := context.WithCancel(rt.base)
	defer cancelStream()
	stream, welcome, err := rt.handshake(ctx, streamCtx, cancelStream)
	if ctx.Err() != nil {
		return sessionEnd{kind: endStopped}
	}
	if err != nil {
		return sessionEnd{kind: endBroken, err: err}
	}
	heartbeat := rt.opts.HeartbeatInterval
	if heartbeat <= 0 {
		heartbeat = durationFromProto(welcome.GetHeartbeatInterval())
	}
	if heartbeat <= 0 {
		heartbeat = defaultHeartbeat
	}
	heartbeat = max(heartbeat, minHeartbeat)
	maxCredits := int(welcome.GetMaxCredits())
	if maxCredits == 0 {
		maxCredits = defaultMaxCredits
	}
	rt.log.Info("worker session established", "session_id", welcome.GetSessionId(), "namespace", rt.hello.GetNamespace(), "heartbeat", heartbeat)
	if frame := welcome.GetMaxFrameBytes(); frame > maxMessageBytes {
		rt.log.Error("the dispatcher may send worker frames larger than this worker receives: upgrade the conveyor Go SDK",
			"max_frame_bytes", frame, "receive_limit", maxMessageBytes)
	}
	s := &session{
		rt:         rt,
		epoch:      epoch,
		stream:     stream,
		inbound:    make(chan inboundMessage),
		recvDone:   make(chan struct{}),
		running:    map[string]*runningTask{},
		maxCredits: maxCredits,
	}
	go s.receive()
	defer close(s.recvDone)
	end := s.serve(ctx, heartbeat)
	if end.kind == endBroken {
		s.abandon(ErrStreamLost)
		end.welcomed = true
		return end
	}
	s.close()
	s.abandon(ErrDrainTimeout)
	return end
}

func (rt *workerRuntime) handshake(ctx, streamCtx context.Context, cancelStream context.CancelFunc) (connectStream, *conveyorv1.Welcome, error) {
	stopWatch := context.AfterFunc(ctx, cancelStream)
	defer stopWatch()
	var timedOut atomic.Bool
	timer := time.AfterFunc(handshakeTimeout, func() {
		timedOut.Store(true)
		cancelStream()
	})
	defer timer.Stop()
	fail := func(err error) (connectStream, *conveyorv1.Welcome, error) {
		if timedOut.Load() {
			err = status.Errorf(codes.DeadlineExceeded, "no Welcome within %s of Hello", handshakeTimeout)
		}
		return nil, nil, wrapRPC("Connect", err)
	}
	stream, err := conveyorv1.NewDispatchServiceClient(rt.conn).Connect(streamCtx)
	if err != nil {
		return fail(err)
	}
	hello := &conveyorv1.ConnectRequest{Message: &conveyorv1.ConnectRequest_Hello{Hello: rt.hello}}
	if err := stream.Send(hello); err != nil {
		if err == io.EOF { // the stream ended; Recv has the status
			_, err = stream.Recv()
		}
		return fail(err)
	}
	first, err := stream.Recv()
	if err == io.EOF {
		err = status.Error(codes.Unavailable, "stream ended before Welcome")
	}
	if err != nil {
		return fail(err)
	}
	welcome := first.GetWelcome()
	if welcome == nil {
		return nil, nil, &ProtocolError{fmt.Sprintf("expected Welcome as the first message, got %T", first.GetMessage())}
	}
	return stream, welcome, nil
}

// receive feeds the session loop with inbound messages until an error.
func (s *session) receive() {
	for {
		msg, err := s.stream.Recv()
		select {
		case s.inbound <- inboundMessage{msg, err}:
		case <-s.recvDone:
			return
		}
		if err != nil {
			return
		}
	}
}

func (s *session) serve(ctx context.Context, heartbeatEvery time.Duration) sessionEnd {
	heartbeat := time.NewTicker(heartbeatEvery)
	defer heartbeat.Stop()
	defer func() {
		if s.drainTimer != nil {
			s.drainTimer.Stop()
		}
	}()
	for {
		if s.draining && len(s.running) == 0 {
			return s.drainedEnd()
		}
		if err := s.grantCredits(); err != nil {
			return s.streamEnded(err)
		}
		var stop <-chan struct{}
		if !s.stopping {
			stop = ctx.Done()
		}
		var drainOver <-chan time.Time
		if s.drainTimer != nil {
			drainOver = s.drainTimer.C
		}
		select {
		case <-stop:
			s.rt.log.Info("draining before shutdown", "running", len(s.running), "grace", s.rt.opts.GracePeriod)
			s.drain(true, s.rt.opts.GracePeriod)
		case <-heartbeat.C:
			if err := s.send(&conveyorv1.ConnectRequest{Message: &conveyorv1.ConnectRequest_Heartbeat{Heartbeat: &conveyorv1.Heartbeat{}}}); err != nil {
				return s.streamEnded(err)
			}
		case ev := <-s.rt.events:
			if err := s.onEvent(ev); err != nil {
				return s.streamEnded(err)
			}
		case in := <-s.inbound:
			if in.err != nil {
				s.recvEnded = true
				return s.streamEnded(in.err)
			}
			s.handle(in.msg)
		case <-drainOver:
			s.rt.log.Warn("drain grace period over", "abandoned", len(s.running))
			return s.drainedEnd()
		}
	}
}

// drainedEnd is the end of a draining session: stop, or reconnect.
func (s *session) drainedEnd() sessionEnd {
	if s.stopping {
		return sessionEnd{kind: endStopped}
	}
	return sessionEnd{kind: endDrained, reason: s.drainReason}
}

// streamEnded is the end of a session whose stream failed or ended:
// expected while draining, a failure otherwise.
func (s *session) streamEnded(err error) sessionEnd {
	if s.draining {
		return s.drainedEnd()
	}
	if err == io.EOF {
		err = status.Error(codes.Unavailable, "the dispatcher ended the stream")
	}
	return sessionEnd{kind: endBroken, err: wrapRPC("Connect", err), welcomed: true}
}

// drainReasonName is a Drain's reason for logs: "rebalance", "shutdown",
// "" when unspecified, the number when unknown to this SDK.
func drainReasonName(r conveyorv1.DrainReason) string {
	if r == conveyorv1.DrainReason_DRAIN_REASON_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(r.String(), "DRAIN_REASON_"))
}

// drain starts draining, or tightens a drain under way: the earlier
// deadline wins and a local stop request is never forgotten.
func (s *session) drain(stopping bool, grace time.Duration) {
	proposed := time.Now().Add(grace)
	if !s.draining || proposed.Before(s.deadline) {
		s.deadline = proposed
		if s.drainTimer != nil {
			s.drainTimer.Stop()
		}
		s.drainTimer = time.NewTimer(grace)
	}
	s.draining = true
	s.stopping = s.stopping || stopping
}

func (s *session) handle(msg *conveyorv1.ConnectResponse) {
	switch m := msg.GetMessage().(type) {
	case *conveyorv1.ConnectResponse_Assignments:
		for _, a := range m.Assignments.GetAssignments() {
			s.start(a)
		}
	case *conveyorv1.ConnectResponse_CancelAssignment:
		id := m.CancelAssignment.GetTaskId()
		if r, ok := s.running[id]; ok {
			s.rt.log.Info("task cancelled by the dispatcher", "task_id", id, "reason", m.CancelAssignment.GetReason())
			r.cancelled = true
			r.cancel(ErrTaskCancelled)
		}
	case *conveyorv1.ConnectResponse_Drain:
		grace := durationFromProto(m.Drain.GetGrace())
		if grace <= 0 {
			grace = s.rt.opts.GracePeriod
		}
		s.drainReason = m.Drain.GetReason()
		s.rt.log.Info("the dispatcher asked to drain", "reason", drainReasonName(s.drainReason), "grace", grace, "running", len(s.running))
		s.drain(false, grace)
	case *conveyorv1.ConnectResponse_OutcomeRejected:
		r := m.OutcomeRejected
		s.rt.log.Warn("outcome rejected by the dispatcher", "task_id", r.GetTaskId(),
			"code", codes.Code(r.GetCode()).String(), "message", r.GetMessage())
	case *conveyorv1.ConnectResponse_Welcome:
		s.rt.log.Warn("ignoring a second Welcome")
	default:
		s.rt.log.Debug("ignoring a message of a kind this SDK does not know")
	}
}

// start launches the runner of one assignment, unless draining: then the
// task stays leased until the stream closes, which puts it back in its queue.
func (s *session) start(a *conveyorv1.Assignment) {
	if s.outstanding == 0 {
		s.rt.log.Warn("assignment beyond the credits granted", "task_id", a.GetTaskId())
	} else {
		s.outstanding--
	}
	if s.draining {
		s.rt.log.Debug("not starting an assignment while draining", "task_id", a.GetTaskId())
		return
	}
	ctx, cancel := context.WithCancelCause(s.rt.base)
	// An earlier attempt of the same task may still run here; its outcome
	// no longer matches a lease token and is dropped.
	if previous, ok := s.running[a.GetTaskId()]; ok {
		previous.cancel(ErrTaskCancelled)
	}
	s.running[a.GetTaskId()] = &runningTask{token: a.GetLeaseToken(), cancel: cancel}
	s.rt.inFlight++
	go s.rt.runTask(ctx, cancel, s.epoch, a, s.rt.handlers[a.GetName()])
}

// grantCredits grants free slots, so that running tasks plus unused credits
// never exceed the concurrency, nor unused credits the session's limit.
func (s *session) grantCredits() error {
	if s.draining {
		return nil
	}
	free := s.rt.opts.Concurrency - s.rt.inFlight - s.outstanding
	credits := min(free, s.maxCredits-s.outstanding)
	if credits <= 0 {
		return nil
	}
	s.outstanding += credits
	return s.send(&conveyorv1.ConnectRequest{Message: &conveyorv1.ConnectRequest_GrantCredits{GrantCredits: &conveyorv1.GrantCredits{Credits: uint32(credits)}}})
}

// onEvent handles ev and every other event already waiting, reporting the
// outcomes in as few frames as possible.
func (s *session) onEvent(ev runnerEvent) error {
	var outcomes []*conveyorv1.TaskOutcome
	for {
		if ev.finished {
			s.rt.inFlight--
			if outcome := s.outcomeOf(ev); outcome != nil {
				outcomes = append(outcomes, outcome)
			}
		} else if ev.progress != nil {
			if s.isCurrent(ev) {
				report := &conveyorv1.ReportProgress{TaskId: ev.taskID, LeaseToken: ev.token, Progress: ev.progress}
				if err := s.send(&conveyorv1.ConnectRequest{Message: &conveyorv1.ConnectRequest_ReportProgress{ReportProgress: report}}); err != nil {
					return err
				}
			}
		} else if s.isCurrent(ev) {
			started := &conveyorv1.TaskStarted{TaskId: ev.taskID, LeaseToken: ev.token}
			if err := s.send(&conveyorv1.ConnectRequest{Message: &conveyorv1.ConnectRequest_TaskStarted{TaskStarted: started}}); err != nil {
				return err
			}
		}
		if len(outcomes) >= maxOutcomesPerFrame {
			break
		}
		select {
		case ev = <-s.rt.events:
			continue
		default:
		}
		break
	}
	if len(outcomes) == 0 {
		return nil
	}
	return s.send(&conveyorv1.ConnectRequest{Message: &conveyorv1.ConnectRequest_ReportOutcomes{ReportOutcomes: &conveyorv1.ReportOutcomes{Outcomes: outcomes}}})
}

func (s *session) isCurrent(ev runnerEvent) bool {
	r, ok := s.running[ev.taskID]
	return ok && ev.epoch == s.epoch && r.token == ev.token && !r.cancelled
}

// outcomeOf is the outcome to report for a finished runner: nil when it
// belongs to an earlier session or was cancelled.
func (s *session) outcomeOf(ev runnerEvent) *conveyorv1.TaskOutcome {
	r, ok := s.running[ev.taskID]
	if ev.epoch != s.epoch || !ok || r.token != ev.token {
		return nil
	}
	delete(s.running, ev.taskID)
	if r.cancelled {
		s.rt.log.Debug("dropping the outcome of a cancelled task", "task_id", ev.taskID)
		return nil
	}
	return ev.outcome
}

func (s *session) send(req *conveyorv1.ConnectRequest) error {
	return s.stream.Send(req)
}

// close closes our half of the stream, then waits (bounded) for the
// dispatcher to close its half, so the frames already sent are delivered.
func (s *session) close() {
	if err := s.stream.CloseSend(); err != nil || s.recvEnded {
		return
	}
	timer := time.NewTimer(closeTimeout)
	defer timer.Stop()
	for {
		select {
		case in := <-s.inbound:
			if in.err != nil {
				return
			}
		case <-timer.C:
			return
		}
	}
}

// abandon cancels the handlers still running: the stream that brought
// them is gone, and with it their leases.
func (s *session) abandon(cause error) {
	for id, r := range s.running {
		r.cancel(cause)
		delete(s.running, id)
	}
}
