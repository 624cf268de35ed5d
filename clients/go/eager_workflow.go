package conveyor

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Workflows in eager mode: SubmitWorkflow runs every node in-process, in
// dependency order, before it returns, with the server's semantics: inputs
// prepended to a node's own arguments (ONE: the parent's result, LIST: the
// JSON array of its parents' results), a node whose parent failed fails
// without running (FAILURE_REASON_DEPENDENCY_FAILED, cause_task_id), a
// node whose parent was cancelled is cancelled, ALL_DONE nodes run anyway
// with {"error": {...}} entries, and ON_FAILURE nodes run once with the
// first failed parent's id and error, or are cancelled.

// eagerWorkflow is a workflow run by an eager client.
type eagerWorkflow struct {
	info  *conveyorv1.Workflow // without nodes
	nodes []*conveyorv1.WorkflowNode
	ids   []string // task id of each node
}

func (e *eagerBackend) SubmitWorkflow(ctx context.Context, in *conveyorv1.SubmitWorkflowRequest, _ ...grpc.CallOption) (*conveyorv1.SubmitWorkflowResponse, error) {
	spec := in.GetWorkflow()
	order, err := validateEagerWorkflow(spec)
	if err != nil {
		return nil, err
	}
	ns := in.GetNamespace()
	e.mu.Lock()
	if key := spec.GetIdempotencyKey(); key != "" {
		if id, ok := e.workflowKeys[scopedKey(ns, key)]; ok {
			wf := e.workflows[id]
			e.mu.Unlock()
			return &conveyorv1.SubmitWorkflowResponse{WorkflowId: id, TaskIds: wf.ids, Duplicate: true}, nil
		}
	}
	now := timestamppb.Now()
	wf := &eagerWorkflow{
		info: &conveyorv1.Workflow{
			Id: uuidV7(), Name: spec.GetName(), State: WorkflowRunning, CreatedAt: now,
			NodeCount: uint32(len(spec.GetNodes())), Namespace: eagerNamespace(ns),
		},
		nodes: spec.GetNodes(),
	}
	for i, node := range spec.GetNodes() {
		options := proto.Clone(spec.GetOptions()).(*conveyorv1.TaskOptions)
		if options == nil {
			options = &conveyorv1.TaskOptions{}
		}
		proto.Merge(options, node.GetTask().GetOptions())
		queue := options.GetQueue()
		if queue == "" {
			queue = "default"
		}
		tc := node.GetTask().GetTraceContext()
		if tc.GetTraceparent() == "" {
			tc = spec.GetTraceContext()
		}
		state := StateWaiting
		if len(node.GetParents()) == 0 {
			state = StateQueued
		}
		task := &conveyorv1.Task{
			Id: uuidV7(), Name: node.GetTask().GetName(), Args: node.GetTask().GetArgs(), Kwargs: node.GetTask().GetKwargs(),
			Options: options, State: state, CreatedAt: now, UpdatedAt: now, Queue: queue, TraceContext: tc,
			WorkflowId: wf.info.Id, WorkflowNode: uint32(i), Namespace: wf.info.Namespace,
		}
		e.tasks[task.Id] = task
		e.order = append(e.order, task.Id)
		wf.ids = append(wf.ids, task.Id)
	}
	for _, o := range spec.GetOutputs() {
		wf.info.OutputTaskIds = append(wf.info.OutputTaskIds, wf.ids[o])
	}
	e.workflows[wf.info.Id] = wf
	if key := spec.GetIdempotencyKey(); key != "" {
		e.workflowKeys[scopedKey(ns, key)] = wf.info.Id
	}
	e.mu.Unlock()
	e.runWorkflow(ctx, wf, spec, order)
	return &conveyorv1.SubmitWorkflowResponse{WorkflowId: wf.info.Id, TaskIds: wf.ids}, nil
}

// runWorkflow runs the nodes in order (a topological order), then records
// the workflow's outcome.
func (e *eagerBackend) runWorkflow(ctx context.Context, wf *eagerWorkflow, spec *conveyorv1.WorkflowSpec, order []int) {
	// failedAt orders the failures: the first one is the workflow's.
	failedAt := map[int]int{}
	firstFailed := func(nodes []uint32) (int, bool) {
		best, found := -1, false
		for _, p := range nodes {
			if seq, ok := failedAt[int(p)]; ok && (!found || seq < failedAt[best]) {
				best, found = int(p), true
			}
		}
		return best, found
	}
	for _, i := range order {
		node := wf.nodes[i]
		e.mu.Lock()
		task := e.tasks[wf.ids[i]]
		parents := make([]*conveyorv1.Task, len(node.GetParents()))
		for j, p := range node.GetParents() {
			parents[j] = e.tasks[wf.ids[p]]
		}
		now := timestamppb.Now()
		var inputs []*Payload
		run := true
		switch node.GetTrigger() {
		case conveyorv1.NodeTrigger_NODE_TRIGGER_ON_FAILURE:
			p, ok := firstFailed(node.GetParents())
			if !ok {
				task.State, task.UpdatedAt, task.FinishedAt = StateCancelled, now, now
				run = false
				break
			}
			failed := e.tasks[wf.ids[p]]
			id, _ := EncodeJSON(failed.GetId())
			errInfo, _ := EncodeJSON(map[string]string{
				"type": failed.GetError().GetType(), "message": failed.GetError().GetMessage(),
				"traceback": failed.GetError().GetTraceback(),
			})
			inputs = []*Payload{id, errInfo}
		case conveyorv1.NodeTrigger_NODE_TRIGGER_ALL_DONE:
			inputs = nodeInputs(node, parents)
		default:
			if p, ok := firstFailed(node.GetParents()); ok {
				task.State, task.UpdatedAt, task.FinishedAt = StateFailed, now, now
				task.Error = &conveyorv1.TaskError{
					Type:        "DependencyFailed",
					Message:     fmt.Sprintf("did not run: the task it depends on, %s, failed", wf.ids[p]),
					Reason:      conveyorv1.FailureReason_FAILURE_REASON_DEPENDENCY_FAILED,
					CauseTaskId: wf.ids[p],
				}
				run = false
				break
			}
			for _, p := range parents {
				if p.GetState() != StateSucceeded {
					task.State, task.UpdatedAt, task.FinishedAt = StateCancelled, now, now
					run = false
					break
				}
			}
			if run {
				inputs = nodeInputs(node, parents)
			}
		}
		if run {
			task.Args = append(inputs, task.Args...)
			task.State = StateQueued
		}
		e.mu.Unlock()
		if run {
			e.run(ctx, task)
		}
		if e.stateOf(task.Id) == StateFailed {
			failedAt[i] = len(failedAt)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	info := wf.info
	info.FinishedAt = timestamppb.Now()
	if first, ok := firstFailed(allNodes(len(wf.nodes))); ok {
		info.State, info.FailedTaskId = WorkflowFailed, wf.ids[first]
		return
	}
	info.State = WorkflowSucceeded
	results := make([]*conveyorv1.Task, 0, len(spec.GetOutputs()))
	for _, o := range spec.GetOutputs() {
		results = append(results, e.tasks[wf.ids[o]])
	}
	switch {
	case spec.GetOutputList():
		info.Result = resultList(results, false)
	case len(results) == 1:
		info.Result = results[0].GetResult()
	}
}

func allNodes(n int) []uint32 {
	out := make([]uint32, n)
	for i := range out {
		out[i] = uint32(i)
	}
	return out
}

// nodeInputs are the arguments a node's parents give it, by its input mode.
func nodeInputs(node *conveyorv1.WorkflowNode, parents []*conveyorv1.Task) []*Payload {
	input := node.GetInput()
	if input == conveyorv1.NodeInput_NODE_INPUT_UNSPECIFIED {
		switch len(parents) {
		case 0:
			input = conveyorv1.NodeInput_NODE_INPUT_NONE
		case 1:
			input = conveyorv1.NodeInput_NODE_INPUT_ONE
		default:
			input = conveyorv1.NodeInput_NODE_INPUT_LIST
		}
	}
	switch input {
	case conveyorv1.NodeInput_NODE_INPUT_ONE:
		if parents[0].GetState() != StateSucceeded {
			// ALL_DONE: the error entry.
			return []*Payload{{Data: resultItem(parents[0], true), ContentType: JSONContentType}}
		}
		result := parents[0].GetResult()
		if result == nil {
			result = &Payload{Data: []byte("null"), ContentType: JSONContentType}
		}
		return []*Payload{result}
	case conveyorv1.NodeInput_NODE_INPUT_LIST:
		return []*Payload{resultList(parents, true)}
	}
	return nil
}

// resultList is the JSON array of tasks' results (see resultItem).
func resultList(tasks []*conveyorv1.Task, errors bool) *Payload {
	items := make([]json.RawMessage, 0, len(tasks))
	for _, t := range tasks {
		items = append(items, resultItem(t, errors))
	}
	data, _ := json.Marshal(items)
	return &Payload{Data: data, ContentType: JSONContentType}
}

// resultItem is a task's result as a JSON value: a JSON one as it is,
// another as {"content_type", "base64"}, and (with errors) a task that did
// not succeed as {"error": {"type", "message", "task_id"}}.
func resultItem(t *conveyorv1.Task, errors bool) json.RawMessage {
	if t.GetState() != StateSucceeded && errors {
		typ, msg := t.GetError().GetType(), t.GetError().GetMessage()
		if t.GetState() != StateFailed {
			typ, msg = t.GetState().String(), "the task did not succeed"
		}
		entry, _ := json.Marshal(map[string]any{"error": map[string]string{"type": typ, "message": msg, "task_id": t.GetId()}})
		return entry
	}
	r := t.GetResult()
	switch {
	case len(r.GetData()) == 0 && IsJSON(r.GetContentType()):
		return json.RawMessage("null")
	case IsJSON(r.GetContentType()) && json.Valid(r.GetData()):
		return json.RawMessage(r.GetData())
	}
	entry, _ := json.Marshal(map[string]string{"content_type": r.GetContentType(), "base64": base64.StdEncoding.EncodeToString(r.GetData())})
	return entry
}

// validateEagerWorkflow checks what the server checks and returns a
// topological order of the nodes (lowest index first among ready ones).
func validateEagerWorkflow(spec *conveyorv1.WorkflowSpec) ([]int, error) {
	nodes := spec.GetNodes()
	if len(nodes) == 0 {
		return nil, status.Error(codes.InvalidArgument, "workflow.nodes: a workflow needs at least one node")
	}
	if len(nodes) > MaxWorkflowNodes {
		return nil, status.Errorf(codes.ResourceExhausted, "workflow.nodes: %d nodes, at most %d", len(nodes), MaxWorkflowNodes)
	}
	children := make([][]int, len(nodes))
	pending := make([]int, len(nodes))
	edges := 0
	for i, n := range nodes {
		field := fmt.Sprintf("workflow.nodes[%d]", i)
		if err := validateEager(n.GetTask(), field+".task"); err != nil {
			return nil, err
		}
		if n.GetTask().GetIdempotencyKey() != "" {
			return nil, status.Errorf(codes.InvalidArgument, "%s.task.idempotency_key: a node cannot have one (the workflow has idempotency_key)", field)
		}
		seen := map[uint32]bool{}
		for j, p := range n.GetParents() {
			switch {
			case int(p) >= len(nodes):
				return nil, status.Errorf(codes.InvalidArgument, "%s.parents[%d]: %d is out of range (%d nodes)", field, j, p, len(nodes))
			case int(p) == i:
				return nil, status.Errorf(codes.InvalidArgument, "%s.parents[%d]: a node cannot depend on itself", field, j)
			case seen[p]:
				return nil, status.Errorf(codes.InvalidArgument, "%s.parents[%d]: %d is named twice", field, j, p)
			}
			seen[p] = true
			children[p] = append(children[p], i)
		}
		pending[i] = len(n.GetParents())
		edges += len(n.GetParents())
		if n.GetInput() == conveyorv1.NodeInput_NODE_INPUT_ONE && len(n.GetParents()) != 1 && n.GetTrigger() != conveyorv1.NodeTrigger_NODE_TRIGGER_ON_FAILURE {
			return nil, status.Errorf(codes.InvalidArgument, "%s.input: NODE_INPUT_ONE needs exactly one parent, not %d", field, len(n.GetParents()))
		}
	}
	if edges > MaxWorkflowEdges {
		return nil, status.Errorf(codes.ResourceExhausted, "workflow.nodes: %d edges, at most %d", edges, MaxWorkflowEdges)
	}
	for j, o := range spec.GetOutputs() {
		if int(o) >= len(nodes) {
			return nil, status.Errorf(codes.InvalidArgument, "workflow.outputs[%d]: %d is out of range (%d nodes)", j, o, len(nodes))
		}
	}
	if !spec.GetOutputList() && len(spec.GetOutputs()) > 1 {
		return nil, status.Error(codes.InvalidArgument, "workflow.outputs: several outputs need output_list")
	}
	// Kahn's algorithm, the ready node of lowest index first (a min-heap
	// would do; compiled canvases have their parents first anyway).
	order := make([]int, 0, len(nodes))
	ready := []int{}
	for i := range nodes {
		if pending[i] == 0 {
			ready = append(ready, i)
		}
	}
	for len(ready) > 0 {
		best := 0
		for k := range ready {
			if ready[k] < ready[best] {
				best = k
			}
		}
		i := ready[best]
		ready = append(ready[:best], ready[best+1:]...)
		order = append(order, i)
		for _, c := range children[i] {
			if pending[c]--; pending[c] == 0 {
				ready = append(ready, c)
			}
		}
	}
	if len(order) != len(nodes) {
		for i := range nodes {
			if pending[i] > 0 {
				return nil, status.Errorf(codes.InvalidArgument, "workflow.nodes[%d].parents: the nodes form a cycle", i)
			}
		}
	}
	return order, nil
}

func (e *eagerBackend) workflow(ns, id string) (*eagerWorkflow, error) {
	wf, ok := e.workflows[id]
	if !ok || wf.info.GetNamespace() != eagerNamespace(ns) {
		return nil, status.Errorf(codes.NotFound, "workflow not found: %s (eager mode knows only workflows submitted to this client, in its namespace)", id)
	}
	return wf, nil
}

// workflowSnapshot is a copy of workflow id as view says.
func (e *eagerBackend) workflowSnapshot(ns, id string, view conveyorv1.WorkflowView) (*conveyorv1.Workflow, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	wf, err := e.workflow(ns, id)
	if err != nil {
		return nil, err
	}
	out := proto.Clone(wf.info).(*conveyorv1.Workflow)
	out.StateCounts = make([]uint32, len(conveyorv1.TaskState_name))
	for i, tid := range wf.ids {
		task, ok := e.tasks[tid]
		if !ok {
			continue // forgotten
		}
		out.StateCounts[task.GetState()]++
		if view == ViewSummary {
			continue
		}
		t := proto.Clone(task).(*conveyorv1.Task)
		if view != ViewFull {
			t.Args, t.Kwargs = nil, nil
		}
		n := wf.nodes[i]
		out.Nodes = append(out.Nodes, &conveyorv1.WorkflowNodeStatus{
			Index: uint32(i), Task: t, Parents: n.GetParents(), Input: n.GetInput(), Trigger: n.GetTrigger(), Label: n.GetLabel(),
		})
	}
	return out, nil
}

func (e *eagerBackend) CancelWorkflow(_ context.Context, in *conveyorv1.CancelWorkflowRequest, _ ...grpc.CallOption) (*conveyorv1.CancelWorkflowResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	wf, err := e.workflow(in.GetNamespace(), in.GetWorkflowId())
	if err != nil {
		return nil, err
	}
	// Eager workflows have finished when SubmitWorkflow returns.
	return &conveyorv1.CancelWorkflowResponse{Cancelled: 0, State: wf.info.GetState()}, nil
}

func (e *eagerBackend) GetWorkflow(_ context.Context, in *conveyorv1.GetWorkflowRequest, _ ...grpc.CallOption) (*conveyorv1.GetWorkflowResponse, error) {
	view := in.GetView()
	if view == conveyorv1.WorkflowView_WORKFLOW_VIEW_UNSPECIFIED {
		view = ViewNodes
	}
	wf, err := e.workflowSnapshot(in.GetNamespace(), in.GetWorkflowId(), view)
	if err != nil {
		return nil, err
	}
	return &conveyorv1.GetWorkflowResponse{Workflow: wf}, nil
}

func (e *eagerBackend) WaitWorkflow(_ context.Context, in *conveyorv1.WaitWorkflowRequest, _ ...grpc.CallOption) (*conveyorv1.WaitWorkflowResponse, error) {
	view := in.GetView()
	if view == conveyorv1.WorkflowView_WORKFLOW_VIEW_UNSPECIFIED {
		view = ViewSummary
	}
	wf, err := e.workflowSnapshot(in.GetNamespace(), in.GetWorkflowId(), view)
	if err != nil {
		return nil, err
	}
	return &conveyorv1.WaitWorkflowResponse{Workflow: wf}, nil
}

func (e *eagerBackend) WatchWorkflow(ctx context.Context, in *conveyorv1.WatchWorkflowRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[conveyorv1.WatchWorkflowResponse], error) {
	view := in.GetView()
	if view == conveyorv1.WorkflowView_WORKFLOW_VIEW_UNSPECIFIED {
		view = ViewNodes
	}
	wf, err := e.workflowSnapshot(in.GetNamespace(), in.GetWorkflowId(), view)
	if err != nil {
		return nil, err
	}
	return &eagerStream[conveyorv1.WatchWorkflowResponse]{ctx: ctx, next: &conveyorv1.WatchWorkflowResponse{Workflow: wf}}, nil
}
