package conveyor

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
)

// Workflows (Celery's canvas). A [Canvas] is a signature, a chain, a group or
// a chord; [CompileWorkflow] turns one into the DAG the server runs
// (conveyorv1.WorkflowSpec) with the algorithm every Conveyor SDK shares, so
// that the same canvas gives the same DAG in every language:
//
// compile(element, parents P, input mode M, trigger T) appends the
// element's nodes and returns its exits (the nodes whose results are its
// result):
//
//   - a signature is one node with parents P, input M (NONE when P is empty
//     or the signature is immutable) and trigger T;
//   - a chain compiles its first element with (P, M, T), then each next one
//     with the previous one's exits as parents and input ONE (one exit) or
//     LIST (several); its exits are its last element's;
//   - a group compiles every element with (P, M, T); its exits are theirs,
//     concatenated in order (nested groups flatten);
//   - a chord compiles its header as a group with (P, M, T), then its body
//     with the header's exits as parents, input LIST and trigger ALL_DONE
//     with [ChordCanvas.AllowErrors] (else the default); its exits are the
//     body's.
//
// After an element's own nodes come its links, each compiled with the
// element's exits as parents and input ONE or LIST, then its error links,
// each compiled with every node of the element (its links excepted) as
// parents and trigger ON_FAILURE. Neither is an exit.

// Canvas is a workflow element: a [*Signature], a [*ChainCanvas], a
// [*GroupCanvas] or a [*ChordCanvas]. Every method of these types returns a
// new value and leaves its receiver as it was, so one element can appear in
// several canvases. Submit one with [Client.SubmitWorkflow].
type Canvas interface {
	// String is the element's display name, e.g. "chain(add, add, xsum)".
	String() string
	compile(c *compiler, in entry) ([]uint32, error)
}

// entry is where an element is attached: its entry nodes' parents, input
// mode and trigger, and the label path of its nodes.
type entry struct {
	parents []uint32
	input   conveyorv1.NodeInput
	trigger conveyorv1.NodeTrigger
	path    string
}

// links are an element's callbacks (Celery's link) and errbacks (link_error).
type links struct {
	callbacks []Canvas
	errbacks  []Canvas
}

func (l links) withCallbacks(cbs []Canvas) links {
	return links{callbacks: append(append([]Canvas(nil), l.callbacks...), cbs...), errbacks: l.errbacks}
}

func (l links) withErrbacks(ebs []Canvas) links {
	return links{callbacks: l.callbacks, errbacks: append(append([]Canvas(nil), l.errbacks...), ebs...)}
}

// Signature is one task with its bound arguments and options (Celery's
// signature, `add.s(2)`): build it with [Sig]. A mutable signature placed
// after another element receives that element's result first (a chain step
// gets the previous result, a chord body the list of header results), then
// its own bound arguments; an immutable one ([Signature.Immutable],
// Celery's `.si()`) receives only its own.
type Signature struct {
	name      string
	opts      []Option
	immutable bool
	links     links
}

// Sig returns the signature of task name with opts: arguments ([Args],
// [Kwarg], [Kwargs]) and options ([WithQueue], [WithPriority],
// [WithCountdown], [WithMaxRetries], [WithSoftTimeLimit], [WithHeader], ...),
// which go into the node's own TaskSpec. [WithIdempotencyKey] belongs to the
// whole workflow (pass it to [Client.SubmitWorkflow]): on a signature it
// fails the compilation.
//
//	add := conveyor.Sig("add")
//	conveyor.Chain(add.With(conveyor.Args(2, 2)), add.With(conveyor.Args(4)))
func Sig(name string, opts ...Option) *Signature {
	return &Signature{name: name, opts: append([]Option(nil), opts...)}
}

// Name is the task name.
func (s *Signature) Name() string { return s.name }

// IsImmutable reports whether the signature ignores its parents' results.
func (s *Signature) IsImmutable() bool { return s.immutable }

// Request is the signature as a task to submit alone (with [Client.Submit]
// through its Options, or [Client.SubmitMany]); links are not part of it.
func (s *Signature) Request() TaskRequest { return NewRequest(s.name, s.opts...) }

func (s *Signature) clone() *Signature {
	c := *s
	c.opts = append([]Option(nil), s.opts...)
	return &c
}

// With returns a copy with opts added after the signature's own: [Args]
// appends positional arguments (Celery's partial `add.s(2)`), other options
// replace the same option.
func (s *Signature) With(opts ...Option) *Signature {
	c := s.clone()
	c.opts = append(c.opts, opts...)
	return c
}

// Immutable returns a copy that receives no result from its parents
// (Celery's `.si()`): it runs with its own bound arguments only.
func (s *Signature) Immutable() *Signature {
	c := s.clone()
	c.immutable = true
	return c
}

// Link returns a copy that runs callbacks after it succeeds, each receiving
// its result (Celery's link). The callbacks are not part of its result.
func (s *Signature) Link(callbacks ...Canvas) *Signature {
	c := s.clone()
	c.links = s.links.withCallbacks(callbacks)
	return c
}

// LinkError returns a copy that runs errbacks once if it fails (Celery's
// link_error). An errback receives the failed task's id (a string) and its
// error ({"type", "message", "traceback"}) as its first two positional
// arguments, then its own bound arguments.
func (s *Signature) LinkError(errbacks ...Canvas) *Signature {
	c := s.clone()
	c.links = s.links.withErrbacks(errbacks)
	return c
}

// String is the task name.
func (s *Signature) String() string { return s.name }

func (s *Signature) compile(c *compiler, in entry) ([]uint32, error) {
	return c.element(in, s.links, func() ([]uint32, error) {
		if s.name == "" {
			return nil, fmt.Errorf("conveyor: workflow node %d (%s): the task name is empty", len(c.nodes), labelOr(in.path, "signature"))
		}
		spec, err := s.Request().Spec()
		if err != nil {
			return nil, err
		}
		if spec.GetIdempotencyKey() != "" {
			return nil, fmt.Errorf("conveyor: workflow node %d (%s): a node cannot have an idempotency key; pass WithIdempotencyKey to SubmitWorkflow, for the whole workflow", len(c.nodes), s.name)
		}
		input := in.input
		if len(in.parents) == 0 || s.immutable {
			input = conveyorv1.NodeInput_NODE_INPUT_NONE
		}
		label := in.path
		if label == "" {
			label = s.name
		}
		return []uint32{c.add(&conveyorv1.WorkflowNode{
			Task: spec, Parents: in.parents, Input: input, Trigger: in.trigger, Label: label,
		})}, nil
	})
}

// ChainCanvas runs its elements one after the other, each receiving the
// previous one's result (Celery's chain); build it with [Chain].
type ChainCanvas struct {
	elems []Canvas
	links links
}

// Chain returns the chain of elems: each element after the first receives
// the previous one's result as its first argument (the list of results when
// the previous element is a group). Its result is the last element's. An
// empty chain fails the compilation.
func Chain(elems ...Canvas) *ChainCanvas {
	return &ChainCanvas{elems: append([]Canvas(nil), elems...)}
}

// Elements are the chain's elements.
func (ch *ChainCanvas) Elements() []Canvas { return append([]Canvas(nil), ch.elems...) }

// Then returns a copy with elems appended (Celery's `chain | sig`).
func (ch *ChainCanvas) Then(elems ...Canvas) *ChainCanvas {
	c := *ch
	c.elems = append(append([]Canvas(nil), ch.elems...), elems...)
	return &c
}

// Link returns a copy that runs callbacks with the chain's result once it
// succeeds; see [Signature.Link].
func (ch *ChainCanvas) Link(callbacks ...Canvas) *ChainCanvas {
	c := *ch
	c.links = ch.links.withCallbacks(callbacks)
	return &c
}

// LinkError returns a copy that runs errbacks once, when the first of its
// tasks fails; see [Signature.LinkError].
func (ch *ChainCanvas) LinkError(errbacks ...Canvas) *ChainCanvas {
	c := *ch
	c.links = ch.links.withErrbacks(errbacks)
	return &c
}

// String is "chain(a, b, ...)".
func (ch *ChainCanvas) String() string { return "chain(" + joinNames(ch.elems) + ")" }

func (ch *ChainCanvas) compile(c *compiler, in entry) ([]uint32, error) {
	return c.element(in, ch.links, func() ([]uint32, error) {
		if len(ch.elems) == 0 {
			return nil, fmt.Errorf("conveyor: %s: a chain needs at least one element", labelOr(in.path, "chain"))
		}
		var exits []uint32
		for i, e := range ch.elems {
			next := entry{parents: in.parents, input: in.input, trigger: in.trigger, path: childPath(in.path, "chain", i)}
			if i > 0 {
				next = entry{parents: exits, input: inputFor(exits), path: next.path}
			}
			var err error
			if exits, err = c.compileChild(e, next); err != nil {
				return nil, err
			}
		}
		return exits, nil
	})
}

// GroupCanvas runs its elements in parallel (Celery's group); build it with
// [Group]. Its result is the list of its elements' results, in order.
type GroupCanvas struct {
	elems []Canvas
	links links
}

// Group returns the group of elems, run in parallel. Its result is the
// list of their results in declaration order (a nested group's results are
// spliced in). An empty group fails the compilation.
func Group(elems ...Canvas) *GroupCanvas {
	return &GroupCanvas{elems: append([]Canvas(nil), elems...)}
}

// Elements are the group's elements.
func (g *GroupCanvas) Elements() []Canvas { return append([]Canvas(nil), g.elems...) }

// Link returns a copy that runs callbacks with the list of the group's
// results once they all succeed; see [Signature.Link].
func (g *GroupCanvas) Link(callbacks ...Canvas) *GroupCanvas {
	c := *g
	c.links = g.links.withCallbacks(callbacks)
	return &c
}

// LinkError returns a copy that runs errbacks once, when the first of its
// tasks fails; see [Signature.LinkError].
func (g *GroupCanvas) LinkError(errbacks ...Canvas) *GroupCanvas {
	c := *g
	c.links = g.links.withErrbacks(errbacks)
	return &c
}

// String is "group(a, b, ...)", repeats shortened as "add x10".
func (g *GroupCanvas) String() string { return "group(" + joinNames(g.elems) + ")" }

func (g *GroupCanvas) compile(c *compiler, in entry) ([]uint32, error) {
	return c.element(in, g.links, func() ([]uint32, error) {
		if len(g.elems) == 0 {
			return nil, fmt.Errorf("conveyor: %s: a group needs at least one element", labelOr(in.path, "group"))
		}
		var exits []uint32
		for i, e := range g.elems {
			sub, err := c.compileChild(e, entry{parents: in.parents, input: in.input, trigger: in.trigger, path: childPath(in.path, "group", i)})
			if err != nil {
				return nil, err
			}
			exits = append(exits, sub...)
		}
		return exits, nil
	})
}

// Starmap returns a group of sig, one task per argument list, each list's
// values prepended to sig's own bound arguments (Celery's
// `add.starmap([(2, 2), (4, 4)])`, run as one task per list rather than one
// task in all). Its result is the list of their results, in order.
func Starmap(sig *Signature, argLists ...[]any) *GroupCanvas {
	elems := make([]Canvas, len(argLists))
	for i, args := range argLists {
		c := sig.clone()
		c.opts = append([]Option{Args(args...)}, sig.opts...)
		elems[i] = c
	}
	return Group(elems...)
}

// Map returns a group of sig, one task per value, each value prepended to
// sig's own bound arguments (Celery's `add.map([...])`, one task per value).
func Map(sig *Signature, values ...any) *GroupCanvas {
	lists := make([][]any, len(values))
	for i, v := range values {
		lists[i] = []any{v}
	}
	return Starmap(sig, lists...)
}

// ChordCanvas runs a header in parallel, then its body with the list of the
// header's results (Celery's chord); build it with [Chord].
type ChordCanvas struct {
	header      Canvas
	body        Canvas
	allowErrors bool
	links       links
}

// Chord returns the chord of header (usually a [Group]; any element is run
// as a group of one) and body: body runs once every header task succeeded,
// with the list of their results (in order) as its first argument, even for
// a one-task header. Its result is the body's.
func Chord(header, body Canvas) *ChordCanvas {
	return &ChordCanvas{header: header, body: body}
}

// Header is the chord's header.
func (ch *ChordCanvas) Header() Canvas { return ch.header }

// Body is the chord's body.
func (ch *ChordCanvas) Body() Canvas { return ch.body }

// AllowErrors returns a copy whose body runs once every header task has
// finished, whatever its outcome: a header task that did not succeed
// appears in the body's list as {"error": {"type", "message", "task_id"}}.
func (ch *ChordCanvas) AllowErrors() *ChordCanvas {
	c := *ch
	c.allowErrors = true
	return &c
}

// Link returns a copy that runs callbacks with the body's result once it
// succeeds; see [Signature.Link].
func (ch *ChordCanvas) Link(callbacks ...Canvas) *ChordCanvas {
	c := *ch
	c.links = ch.links.withCallbacks(callbacks)
	return &c
}

// LinkError returns a copy that runs errbacks once, when the first of its
// tasks (header or body) fails; see [Signature.LinkError].
func (ch *ChordCanvas) LinkError(errbacks ...Canvas) *ChordCanvas {
	c := *ch
	c.links = ch.links.withErrbacks(errbacks)
	return &c
}

// String is "chord(header..., body)", e.g. "chord(add x10, tsum)".
func (ch *ChordCanvas) String() string {
	header := nameOf(ch.header)
	if g, ok := ch.header.(*GroupCanvas); ok {
		header = joinNames(g.elems)
	}
	return "chord(" + header + ", " + nameOf(ch.body) + ")"
}

func (ch *ChordCanvas) compile(c *compiler, in entry) ([]uint32, error) {
	return c.element(in, ch.links, func() ([]uint32, error) {
		header, err := c.compileChild(ch.header, entry{parents: in.parents, input: in.input, trigger: in.trigger, path: joinPath(in.path, "chord.header")})
		if err != nil {
			return nil, err
		}
		body := entry{parents: header, input: conveyorv1.NodeInput_NODE_INPUT_LIST, path: joinPath(in.path, "chord.body")}
		if ch.allowErrors {
			body.trigger = conveyorv1.NodeTrigger_NODE_TRIGGER_ALL_DONE
		}
		return c.compileChild(ch.body, body)
	})
}

// Limits the server enforces, checked here for a clear error.
const (
	// MaxWorkflowNodes is the most nodes a workflow may have.
	MaxWorkflowNodes = 20_000
	// MaxWorkflowEdges is the most parent edges a workflow may have in all.
	MaxWorkflowEdges = 200_000
	maxWorkflowLabel = 200
)

// compiler accumulates the nodes of a workflow.
type compiler struct {
	nodes []*conveyorv1.WorkflowNode
	edges int
}

func (c *compiler) add(n *conveyorv1.WorkflowNode) uint32 {
	n.Parents = append([]uint32(nil), n.Parents...)
	n.Label = truncateLabel(n.Label)
	c.edges += len(n.Parents)
	c.nodes = append(c.nodes, n)
	return uint32(len(c.nodes) - 1)
}

func (c *compiler) compileChild(e Canvas, in entry) ([]uint32, error) {
	if isNilCanvas(e) {
		return nil, fmt.Errorf("conveyor: %s: the element is nil", labelOr(in.path, "workflow"))
	}
	if len(c.nodes) > MaxWorkflowNodes {
		return nil, fmt.Errorf("conveyor: the workflow has more than %d nodes: split it", MaxWorkflowNodes)
	}
	return e.compile(c, in)
}

// element compiles an element's own nodes with core, then its links and
// error links.
func (c *compiler) element(in entry, l links, core func() ([]uint32, error)) ([]uint32, error) {
	start := uint32(len(c.nodes))
	exits, err := core()
	if err != nil {
		return nil, err
	}
	end := uint32(len(c.nodes))
	for i, cb := range l.callbacks {
		if _, err := c.compileChild(cb, entry{parents: exits, input: inputFor(exits), path: childPath(in.path, "link", i)}); err != nil {
			return nil, err
		}
	}
	if len(l.errbacks) > 0 {
		all := make([]uint32, 0, end-start)
		for i := start; i < end; i++ {
			all = append(all, i)
		}
		for i, eb := range l.errbacks {
			if _, err := c.compileChild(eb, entry{
				parents: all,
				input:   conveyorv1.NodeInput_NODE_INPUT_NONE,
				trigger: conveyorv1.NodeTrigger_NODE_TRIGGER_ON_FAILURE,
				path:    childPath(in.path, "link_error", i),
			}); err != nil {
				return nil, err
			}
		}
	}
	return exits, nil
}

// inputFor is how a successor takes the results of exits: ONE for one, LIST
// for several.
func inputFor(exits []uint32) conveyorv1.NodeInput {
	if len(exits) == 1 {
		return conveyorv1.NodeInput_NODE_INPUT_ONE
	}
	return conveyorv1.NodeInput_NODE_INPUT_LIST
}

// CompileWorkflow compiles canvas into the workflow the server runs, with
// opts for the whole workflow: task options ([WithQueue], [WithPriority],
// [WithMaxRetries], [WithResultTTL], [WithHeader], ...) become the defaults
// of every node's unset options, [WithIdempotencyKey] and [WithTraceContext]
// are the workflow's, and [WithWorkflowName] names it (default: the
// canvas's String, e.g. "chain(add, add, xsum)"). Arguments cannot be given
// here: bind them to signatures. [Client.SubmitWorkflow] calls it; it is
// exported to inspect or test a canvas's DAG.
func CompileWorkflow(canvas Canvas, opts ...Option) (*conveyorv1.WorkflowSpec, error) {
	if isNilCanvas(canvas) {
		return nil, errors.New("conveyor: the workflow is nil")
	}
	b := NewRequest("workflow", opts...).build()
	if b.err != nil {
		return nil, b.err
	}
	if len(b.spec.GetArgs()) > 0 || len(b.spec.GetKwargs()) > 0 {
		return nil, errors.New("conveyor: arguments cannot be given for a whole workflow: bind them to its signatures")
	}
	c := &compiler{}
	exits, err := c.compileChild(canvas, entry{})
	if err != nil {
		return nil, err
	}
	if len(c.nodes) > MaxWorkflowNodes {
		return nil, fmt.Errorf("conveyor: the workflow has %d nodes, at most %d are accepted: split it", len(c.nodes), MaxWorkflowNodes)
	}
	if c.edges > MaxWorkflowEdges {
		return nil, fmt.Errorf("conveyor: the workflow has %d edges, at most %d are accepted: split it", c.edges, MaxWorkflowEdges)
	}
	_, isGroup := canvas.(*GroupCanvas)
	name := b.workflowName
	if name == "" {
		name = canvas.String()
	}
	return &conveyorv1.WorkflowSpec{
		Nodes:          c.nodes,
		Options:        b.spec.GetOptions(),
		Name:           truncateLabel(name),
		IdempotencyKey: b.spec.GetIdempotencyKey(),
		TraceContext:   b.spec.GetTraceContext(),
		Outputs:        exits,
		OutputList:     isGroup || len(exits) > 1,
	}, nil
}

// WithWorkflowName sets the display name of a workflow given to
// [Client.SubmitWorkflow] (at most 200 bytes; longer names are cut). A task
// submitted with it fails to encode.
func WithWorkflowName(name string) Option {
	return func(b *specBuilder) { b.workflowName = name }
}

func isNilCanvas(e Canvas) bool {
	switch v := e.(type) {
	case nil:
		return true
	case *Signature:
		return v == nil
	case *ChainCanvas:
		return v == nil
	case *GroupCanvas:
		return v == nil
	case *ChordCanvas:
		return v == nil
	}
	return false
}

func nameOf(e Canvas) string {
	if isNilCanvas(e) {
		return "nil"
	}
	return e.String()
}

// joinNames joins the elements' names, runs of one name shortened to
// "name xN".
func joinNames(elems []Canvas) string {
	var parts []string
	for i := 0; i < len(elems); {
		name := nameOf(elems[i])
		j := i + 1
		for j < len(elems) && nameOf(elems[j]) == name {
			j++
		}
		if j-i > 1 {
			parts = append(parts, fmt.Sprintf("%s x%d", name, j-i))
		} else {
			parts = append(parts, name)
		}
		i = j
	}
	return strings.Join(parts, ", ")
}

func joinPath(path, part string) string {
	if path == "" {
		return part
	}
	return path + "." + part
}

func childPath(path, kind string, i int) string {
	return joinPath(path, fmt.Sprintf("%s[%d]", kind, i))
}

func labelOr(path, fallback string) string {
	if path == "" {
		return fallback
	}
	return path
}

// truncateLabel cuts s to at most 200 bytes, on a character boundary,
// ending with "…" when cut.
func truncateLabel(s string) string {
	if len(s) <= maxWorkflowLabel {
		return s
	}
	const ellipsis = "…"
	cut := maxWorkflowLabel - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}
