"""The worker protocol conformance suite: each SDK's example worker (Rust,
Python, Go, TypeScript) against one scripted fake dispatcher, case by case,
so that the four agree on what `DispatchService.Connect` means
(proto/conveyor/v1/dispatch_service.proto).

A case an SDK fails today stays in the suite, marked expected-fail in
KNOWN_FAILURES with the reason; `strict` makes it fail again once the SDK is
fixed, so the entry is removed with the fix.
"""

from __future__ import annotations

import json
import statistics
import threading
import time

import grpc
import pytest

from conftest import EXAMPLE_TASKS, LANGUAGES
from fake_dispatcher import FakeDispatcher, assignment, payload

from conveyor.v1 import dispatch_service_pb2 as pb

# (language, case) -> why that SDK fails the case today.
KNOWN_FAILURES: dict[tuple[str, str], str] = {
}

# How long a worker may take to start and open its first stream.
STARTUP = 30.0


def languages(case: str) -> list:
    marks = {
        language: pytest.mark.xfail(reason=KNOWN_FAILURES[(language, case)], strict=True)
        for language in LANGUAGES
        if (language, case) in KNOWN_FAILURES
    }
    return [pytest.param(language, marks=marks.get(language, ()), id=language) for language in LANGUAGES]


def connect(start_worker, fake: FakeDispatcher, language: str, *, heartbeat: float = 60.0,
            max_credits: int = 1024, **options):
    """Starts the worker, accepts its first stream; returns (worker, session, hello)."""
    worker = start_worker(language, fake, **options)
    session = fake.session(timeout=STARTUP)
    hello = session.welcome(heartbeat=heartbeat, max_credits=max_credits)
    return worker, session, hello


def await_credits(session, total: int, timeout: float = 10.0) -> int:
    """Waits until `total` credits in all were granted on the stream."""
    return session.await_credits(total, timeout)


def result_of(outcome) -> object:
    assert outcome.WhichOneof("outcome") == "result", f"expected a result, got {outcome}"
    assert outcome.result.content_type == "application/json", f"result content type {outcome.result.content_type!r}"
    return json.loads(outcome.result.data)


def error_of(outcome):
    assert outcome.WhichOneof("outcome") == "error", f"expected an error, got {outcome}"
    return outcome.error


# --- Hello ------------------------------------------------------------------------


@pytest.mark.parametrize("language", languages("hello"))
def test_hello_names_the_worker(language, fake, start_worker):
    """The first message is Hello: the configured id, queue and slots, every
    registered task name, the language and a version."""
    worker, session, hello = connect(start_worker, fake, language, concurrency=3, worker_id=f"w-{language}-1",
                                     queue="proto-hello")
    assert session.log[0].kind == "hello", "Hello must be the first message"
    assert hello.worker_id == f"w-{language}-1"
    assert list(hello.queues) == ["proto-hello"]
    assert EXAMPLE_TASKS <= set(hello.task_names), f"task names {list(hello.task_names)}"
    assert len(set(hello.task_names)) == len(hello.task_names), "task names repeat"
    assert hello.concurrency == 3
    assert hello.language == language
    assert hello.sdk_version and hello.sdk_version[0].isdigit(), f"sdk_version {hello.sdk_version!r}"
    assert hello.hostname, "hostname is empty"


@pytest.mark.parametrize("language", languages("hello_limits"))
def test_hello_limits_are_checked_before_connecting(language, fake, start_worker):
    """A worker id over the dispatcher's 200-character limit is refused by the
    SDK itself: the worker exits non-zero, naming the limit, without a Hello."""
    worker = start_worker(language, fake, worker_id="w" * 201)
    code = worker.wait(STARTUP)
    log = worker.log()
    assert code is not None, f"the worker kept running with an invalid id:\n{log}"
    assert code != 0, f"exit code 0 for an invalid worker id:\n{log}"
    assert "200" in log, f"the error does not name the 200-character limit:\n{log}"
    assert fake.maybe_session(0.2) is None, "the worker sent a Hello the dispatcher must refuse"


@pytest.mark.parametrize("language", languages("refused_hello"))
def test_a_refused_hello_is_fatal(language, fake, start_worker):
    """INVALID_ARGUMENT in answer to Hello cannot be fixed by retrying: the
    worker exits non-zero after one attempt and says why."""
    worker = start_worker(language, fake)
    session = fake.session(timeout=STARTUP)
    session.expect("hello")
    session.end(grpc.StatusCode.INVALID_ARGUMENT, "hello.task_names: refused by the protocol suite")
    code = worker.wait(15)
    log = worker.log()
    assert code is not None and code != 0, f"the worker did not exit non-zero (code {code}):\n{log}"
    assert "refused by the protocol suite" in log, f"the dispatcher's reason is not shown:\n{log}"
    assert fake.maybe_session(0.2) is None, "the worker retried a Hello that was refused as invalid"


# --- flow control ------------------------------------------------------------------


@pytest.mark.parametrize("language", languages("credits"))
def test_credits_never_exceed_free_slots(language, fake, start_worker):
    """The worker grants one credit per free slot: none while all slots run,
    one back per finished task."""
    worker, session, hello = connect(start_worker, fake, language, concurrency=3)
    assert await_credits(session, 3) == 3
    extra = [i for i in session.collect(0.5) if i.kind == "grant_credits"]
    assert not extra, f"granted beyond its 3 slots: {[i.message.credits for i in extra]}"
    tasks = [assignment("sleep", [payload("1.0")]) for _ in range(3)]
    sent = time.monotonic()
    session.assign(*tasks)
    during = [i for i in session.collect(0.6) if i.kind == "grant_credits"]
    assert not during, "granted credits while every slot was busy"
    outcomes = session.outcomes(3)
    finished = time.monotonic() - sent
    assert {o.task_id for o in outcomes.values()} == {t.task_id for t in tasks}
    assert finished < 2.5, f"3 one-second tasks on 3 slots took {finished:.2f}s: not run at once"
    await_credits(session, 6)  # each finished task's slot comes back as a credit
    session.collect(0.3)
    assert session.granted == 6, f"{session.granted} credits granted in all for 3 slots and 3 finished tasks"


@pytest.mark.parametrize("language", languages("max_credits"))
def test_credits_respect_welcome_max_credits(language, fake, start_worker):
    """Unused credits never exceed Welcome's max_credits, whatever the slots."""
    worker, session, hello = connect(start_worker, fake, language, concurrency=6, max_credits=2)
    await_credits(session, 2)
    session.collect(0.5)
    granted = session.granted
    assert granted == 2, f"{granted} credits outstanding with max_credits 2"
    assigned = 0
    for _ in range(3):  # use one credit at a time; the worker may top up to 2
        session.assign(assignment("sleep", [payload("3")]))
        assigned += 1
        for item in session.collect(0.4):
            if item.kind == "grant_credits":
                granted += item.message.credits
                assert granted - assigned <= 2, f"{granted - assigned} credits outstanding with max_credits 2"
    assert granted - assigned == 2, f"expected 2 outstanding after topping up, have {granted - assigned}"


# --- argument and result encoding ----------------------------------------------------


@pytest.mark.parametrize("language", languages("positional_args"))
def test_positional_json_arguments_and_results(language, fake, start_worker):
    """Positional JSON payloads in, one JSON result out (content type
    application/json): integers stay exact integers, floats stay floats, the
    empty content type and JSON variants read as JSON; several assignments
    arrive in one frame."""
    worker, session, hello = connect(start_worker, fake, language, concurrency=8)
    await_credits(session, 8)
    big = 2**53 + 1
    cases = {
        "int": (assignment("add", [payload("2"), payload("3")]), 5),
        "float": (assignment("add", [payload("2.5"), payload("1")]), 3.5),
        "list": (assignment("xsum", [payload("[1, 2, 3.5]")]), 6.5),
        "exact": (assignment("add", [payload(str(big)), payload("1")]), big + 1),
        "empty-type": (assignment("add", [payload("2", ""), payload("2", "")]), 4),
        "charset": (assignment("add", [payload("1", "application/json; charset=utf-8"), payload("1")]), 2),
        "suffix": (assignment("add", [payload("3", "application/vnd.conveyor+json"), payload("4")]), 7),
        "null-result": (assignment("sleep", [payload("0")]), None),
    }
    session.assign(*(a for a, _ in cases.values()))
    outcomes = session.outcomes(len(cases))
    for label, (task, expected) in cases.items():
        value = result_of(outcomes[task.task_id])
        assert value == expected and type(value) is type(expected), f"{label}: got {value!r}, want {expected!r}"


@pytest.mark.parametrize("language", languages("named_args"))
def test_named_json_arguments(language, fake, start_worker):
    """Named JSON payloads reach the SDK: bound to the handler's parameters
    where the language has them (result 5), else left to the handler, whose
    positional read then fails for good (no retry of a call that cannot work).
    Either way the worker reports an outcome and keeps running."""
    worker, session, hello = connect(start_worker, fake, language)
    await_credits(session, 4)
    named = assignment("add", kwargs={"a": payload("2"), "b": payload("3")})
    session.assign(named)
    outcome = session.outcomes(1)[named.task_id]
    if outcome.WhichOneof("outcome") == "result":
        assert result_of(outcome) == 5
    else:
        assert not outcome.error.retryable, f"a call that cannot bind is retryable: {outcome.error}"
    after = assignment("add", [payload("1"), payload("1")])
    await_credits(session, 5)  # the slot back
    session.assign(after)
    assert result_of(session.outcomes(1)[after.task_id]) == 2


# --- error mapping -------------------------------------------------------------------


@pytest.mark.parametrize("language", languages("error_mapping"))
def test_handler_error_becomes_a_typed_failure(language, fake, start_worker):
    """A failing handler is reported as an error outcome with its type, its
    message (UTF-8 intact) and its retryability."""
    worker, session, hello = connect(start_worker, fake, language)
    await_credits(session, 4)
    message = "nope: héllo ✓ 日本"
    named = assignment("fail", [payload(json.dumps(message, ensure_ascii=False))])
    default = assignment("fail")
    session.assign(named, default)
    outcomes = session.outcomes(2)
    error = error_of(outcomes[named.task_id])
    assert (error.type, error.message, error.retryable) == ("ValueError", message, False), error
    error = error_of(outcomes[default.task_id])
    assert (error.type, error.message) == ("ValueError", "boom"), error


@pytest.mark.parametrize("language", languages("error_traceback"))
def test_handler_error_carries_a_traceback(language, fake, start_worker):
    """The failure carries the handler's stack as its language prints it."""
    worker, session, hello = connect(start_worker, fake, language)
    await_credits(session, 4)
    task = assignment("fail", [payload('"traced"')])
    session.assign(task)
    error = error_of(session.outcomes(1)[task.task_id])
    assert error.traceback.strip(), f"empty traceback: {error}"


@pytest.mark.parametrize("language", languages("unknown_task"))
def test_unknown_task_name_is_a_retryable_failure(language, fake, start_worker):
    """A name the worker did not register (the dispatcher should never send
    one) fails the attempt as NotRegistered, naming the task, retryable so
    that a worker that registers it can run it."""
    worker, session, hello = connect(start_worker, fake, language)
    await_credits(session, 4)
    task = assignment("no_such_task_here")
    session.assign(task)
    error = error_of(session.outcomes(1)[task.task_id])
    assert error.type == "NotRegistered", error
    assert "no_such_task_here" in error.message, error
    assert error.retryable, f"NotRegistered is final: {error}"


@pytest.mark.parametrize("language", languages("bad_payload"))
def test_undecodable_argument_is_a_final_argument_error(language, fake, start_worker):
    """An argument that is not valid JSON fails the attempt as a non-retryable
    ArgumentError (running it again cannot help); the worker goes on."""
    worker, session, hello = connect(start_worker, fake, language)
    await_credits(session, 4)
    bad = assignment("add", [payload("{not json"), payload("3")])
    session.assign(bad)
    error = error_of(session.outcomes(1)[bad.task_id])
    assert not error.retryable, f"a malformed argument is retryable: {error}"
    assert error.message, error
    after = assignment("add", [payload("1"), payload("1")])
    await_credits(session, 5)  # the slot back
    session.assign(after)
    assert result_of(session.outcomes(1)[after.task_id]) == 2
    assert error.type == "ArgumentError", f"type {error.type!r}, want ArgumentError"


# --- leases --------------------------------------------------------------------------


@pytest.mark.parametrize("language", languages("lease_fencing"))
def test_outcomes_and_starts_echo_the_lease_token(language, fake, start_worker):
    """Every TaskStarted and outcome carries the exact 64-bit lease token of
    its assignment (tokens above 2^53 and near 2^64 included)."""
    worker, session, hello = connect(start_worker, fake, language)
    await_credits(session, 4)
    tokens = [2**64 - 2, 2**63 + 7, 2**53 + 1, 1]
    tasks = [assignment("add", [payload("1"), payload(str(n))], lease_token=token) for n, token in enumerate(tokens)]
    session.assign(*tasks)
    outcomes = session.outcomes(len(tasks))
    for task in tasks:
        assert outcomes[task.task_id].lease_token == task.lease_token, outcomes[task.task_id]
    want = {t.task_id: t.lease_token for t in tasks}
    for item in session.log:
        if item.kind == "task_started":
            assert want[item.message.task_id] == item.message.lease_token, item.message


@pytest.mark.parametrize("language", languages("heartbeat"))
def test_heartbeats_follow_the_welcome_interval(language, fake, start_worker):
    """The worker heartbeats at the interval Welcome names: often enough to
    keep its leases (never 2.5 intervals silent), not a flood."""
    interval = 0.3
    worker, session, hello = connect(start_worker, fake, language, heartbeat=interval)
    beats = [i.at for i in session.collect(3.0) if i.kind == "heartbeat"]
    assert len(beats) >= 6, f"{len(beats)} heartbeats in 3s at a {interval}s interval"
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    assert max(gaps) < 2.5 * interval * 0.8, f"silent for {max(gaps):.2f}s at a {interval}s interval"
    assert 0.5 * interval <= statistics.median(gaps) <= 1.5 * interval, f"gaps {gaps}"
    assert len(beats) <= 3.0 / interval * 2 + 2, f"{len(beats)} heartbeats in 3s: a flood"


# --- cancellation and drain ----------------------------------------------------------


@pytest.mark.parametrize("language", languages("cancel"))
def test_cancel_assignment_stops_the_handler(language, fake, start_worker):
    """CancelAssignment stops the running handler: its slot comes back within
    the revoke grace, and its result is never reported."""
    worker, session, hello = connect(start_worker, fake, language, concurrency=1)
    await_credits(session, 1)
    long = assignment("sleep", [payload("30")])
    session.assign(long)
    time.sleep(0.3)  # let the handler start; the check below is on a deadline
    cancelled = time.monotonic()
    session.cancel(long.task_id)
    grant = session.until(lambda i: i.kind == "grant_credits", 3.0, "the slot back after the cancel")
    assert grant.at - cancelled < 2.5
    after = assignment("add", [payload("20"), payload("22")])
    session.assign(after)
    outcomes = session.outcomes(1)
    assert result_of(outcomes[after.task_id]) == 42
    for item in session.log:
        if item.kind == "report_outcomes":
            for outcome in item.message.outcomes:
                assert not (outcome.task_id == long.task_id and outcome.WhichOneof("outcome") == "result"), (
                    "the cancelled task reported a result"
                )


@pytest.mark.parametrize("language", languages("drain"))
def test_drain_finishes_running_tasks_then_closes(language, fake, start_worker):
    """Drain: the running task finishes and is reported, no credit is granted
    after the drain, the worker closes its half of the stream, and it then
    opens a new session (a drain is a dispatcher's rolling restart)."""
    worker, session, hello = connect(start_worker, fake, language, concurrency=2)
    await_credits(session, 2)
    running = assignment("sleep", [payload("1.0")])
    session.assign(running)
    time.sleep(0.2)
    drained = time.monotonic()
    session.drain(grace=20)
    outcome = session.outcomes(1, timeout=5)[running.task_id]
    assert result_of(outcome) is None
    reported = [i.at for i in session.log if i.kind == "report_outcomes"][-1]
    assert reported - drained > 0.5, "the running task did not run to its end"
    eof = session.until(lambda i: i.kind == "eof", 5.0, "the worker closing its half after the drain")
    assert eof.at >= reported
    late = [i for i in session.log if i.kind == "grant_credits" and i.at > drained + 0.05]
    assert not late, "granted credits while draining"
    session.end()
    again = fake.session(timeout=10)
    assert again.welcome().worker_id == hello.worker_id


@pytest.mark.parametrize("language", languages("drain_new_connection"))
def test_drain_reconnects_on_a_new_connection(language, fake, start_worker):
    """Drain for a rebalance: the running task finishes and is reported before
    the worker closes its half, and its next session comes promptly on a new
    TCP connection (another peer address), never as a new stream on the old
    one: load balancers balance connections, so the old connection would lead
    back to the same dispatcher replica."""
    worker, session, hello = connect(start_worker, fake, language, concurrency=2)
    await_credits(session, 2)
    running = assignment("sleep", [payload("1.0")])
    session.assign(running)
    time.sleep(0.2)
    drained = time.monotonic()
    session.drain(grace=20, reason=pb.DRAIN_REASON_REBALANCE)
    outcome = session.outcomes(1, timeout=5)[running.task_id]
    assert result_of(outcome) is None
    reported = [i.at for i in session.log if i.kind == "report_outcomes"][-1]
    assert reported - drained > 0.5, "the running task did not run to its end"
    eof = session.until(lambda i: i.kind == "eof", 5.0, "the worker closing its half after the drain")
    assert eof.at >= reported, "the running task was reported after the stream ended"
    session.end()
    again = fake.session(timeout=10)
    assert again.welcome().worker_id == hello.worker_id
    assert again.opened_at - eof.at < 3.0, f"reconnected {again.opened_at - eof.at:.1f}s after the drain: not promptly"
    assert again.peer != session.peer, (
        f"the session after a rebalance Drain came on the drained session's connection ({again.peer}): "
        "it must open a new one"
    )


# --- reconnect -----------------------------------------------------------------------

# How many refused attempts the backoff case watches: with delays from 100 ms
# doubling to a 5 s cap this takes about 20 s, and an uncapped doubling would
# show a gap over 12 s by then.
REFUSALS = 10


@pytest.fixture(scope="module")
def backoff_runs(programs, tmp_path_factory):
    """For every language at once (they take ~20 s each): accept a session,
    reset it, refuse REFUSALS reconnects with UNAVAILABLE, then accept again.
    Returns, per language, the connect times after the reset and the final
    Hello (or the error)."""
    from conftest import WorkerProcess
    import os

    runs: dict[str, dict] = {}

    def script(language: str) -> None:
        fake = FakeDispatcher()
        env = dict(os.environ, CONVEYOR_ADDR=fake.url, CONVEYOR_QUEUE="proto-backoff",
                   CONVEYOR_CONCURRENCY="2", CONVEYOR_WORKER_ID=f"backoff-{language}", RUST_LOG="info")
        worker = WorkerProcess(programs[language], env, tmp_path_factory.mktemp("backoff") / f"{language}.log")
        run: dict = {"attempts": [], "hello": None, "error": None, "log": ""}
        runs[language] = run
        try:
            first = fake.session(timeout=STARTUP)
            first.welcome()
            first.await_credits(2)
            reset_at = time.monotonic()
            first.end(grpc.StatusCode.UNAVAILABLE, "stream reset by the protocol suite")
            run["reset_at"] = reset_at
            for _ in range(REFUSALS):
                attempt = fake.session(timeout=15)
                run["attempts"].append(attempt.opened_at)
                attempt.end(grpc.StatusCode.UNAVAILABLE, "dispatcher restarting (protocol suite)")
            final = fake.session(timeout=15)
            run["hello"] = final.welcome()
            final.await_credits(2)
        except AssertionError as error:
            run["error"] = str(error)
        finally:
            worker.kill()
            run["log"] = worker.log()
            fake.stop()

    threads = [threading.Thread(target=script, args=(language,)) for language in LANGUAGES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return runs


@pytest.mark.parametrize("language", languages("reconnect_backoff"))
def test_reconnect_backs_off_with_a_cap(language, backoff_runs):
    """After a reset the worker reconnects soon but not at once; while the
    dispatcher refuses, the delay grows (not a tight loop) up to a cap of a
    few seconds; once accepted it says Hello again under the same id."""
    run = backoff_runs[language]
    assert run["error"] is None, f"{run['error']}\n--- worker log ---\n{run['log']}"
    times = [run["reset_at"], *run["attempts"]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    shown = ", ".join(f"{gap:.2f}" for gap in gaps)
    print(f"{language}: reconnect delays after a reset, then {REFUSALS} refusals (s): {shown}")
    assert gaps[0] >= 0.02, f"reconnected {gaps[0] * 1000:.0f} ms after the reset: no backoff ({shown})"
    assert gaps[0] <= 2.0, f"waited {gaps[0]:.2f}s to reconnect after a working session ({shown})"
    assert sum(1 for t in run["attempts"] if t - run["reset_at"] < 3.0) <= 8, f"a tight loop: {shown}"
    assert statistics.mean(gaps[-3:]) >= 5 * statistics.mean(gaps[:3]), f"the delay does not grow: {shown}"
    assert max(gaps) <= 7.5, f"a delay of {max(gaps):.1f}s: no cap of a few seconds ({shown})"
    assert max(gaps[-3:]) >= 1.5, f"the delay never reached a second ({shown})"
    assert run["hello"].worker_id == f"backoff-{language}"
