"""Worker pools against a real `conveyor dev`: the process pool runs
CPU-bound tasks in parallel, interrupts `time.sleep` at the soft limit,
kills and replaces a child at the hard limit, on revoke and on a crash
(failing only that task), retires children by task count and memory, and
keeps leases while its children burn CPU; per-task pool overrides."""

import multiprocessing
import os
import time

import pool_tasks
import pytest

import conveyor
from conftest import wait_for_state, wait_until

TIMINGS = []


def record(line: str) -> None:
    """Measurements go to stdout (`pytest -s`) and to one file per run."""
    print(line)
    TIMINGS.append(line)
    path = os.path.join(os.environ.get("CONVEYOR_TMP") or "/tmp", "python-pool-timings.txt")
    with open(path, "a") as out:
        out.write(line + "\n")


def pool_worker(start_worker, queue, **settings):
    settings.setdefault("concurrency", 2)
    return start_worker(pool_tasks.app.tasks, queue, **settings)


def warm_up(client, queue, children):
    """Waits until `children` child processes have each run a task."""
    ids = [client.submit("pool_tasks.nap", [0.3], queue=queue) for _ in range(children)]
    return {client.result(task_id, timeout=30)["pid"] for task_id in ids}


def run_burns(client, queue, count, units):
    started = time.monotonic()
    ids = [client.submit("pool_tasks.work", [units], queue=queue) for _ in range(count)]
    pids = [client.result(task_id, timeout=60) for task_id in ids]
    return time.monotonic() - started, pids


def test_process_pool_runs_cpu_bound_tasks_in_parallel(client, start_worker, server):
    threads_queue, process_queue = "py-threads-" + os.urandom(4).hex(), "py-process-" + os.urandom(4).hex()
    pool_worker(start_worker, threads_queue, pool="threads")
    pool_worker(start_worker, process_queue, pool="process")
    warm_up(client, threads_queue, 2)
    assert len(warm_up(client, process_queue, 2)) == 2
    # Another build may share the two cores: up to five rounds, the best
    # counts. Each round also times the same work on a plain multiprocessing
    # pool, which tells how much parallelism the machine gives right now.
    rounds = []
    for round_number in range(5):
        threads, thread_pids = run_burns(client, threads_queue, 4, 1400)
        process, process_pids = run_burns(client, process_queue, 4, 1400)
        plain = plain_pool_time(4, 1400)
        load = os.getloadavg()[0]
        rounds.append((process / threads, plain / threads))
        record(f"cpu-bound x4 (1400 units of pure-Python work each), -c 2, round {round_number + 1}: "
               f"threads {threads:.2f}s, process {process:.2f}s, ratio {process / threads:.2f}; "
               f"plain multiprocessing {plain:.2f}s, ratio {plain / threads:.2f} (load {load:.2f})")
        assert set(thread_pids) == {os.getpid()}
        assert len(set(process_pids)) == 2 and os.getpid() not in process_pids
        if process / threads <= 0.6:
            return
    best, plain_best = min(rounds)
    # No round met 0.6: pass only if the machine itself could not (a plain
    # pool never met it either) and the worker kept up with the plain pool.
    busy = all(plain_ratio > 0.6 for _, plain_ratio in rounds)
    assert busy and best <= plain_best + 0.1, f"(process, plain) / threads ratios per round: {rounds}"
    record("machine busy: the 0.6 bound was not measurable; the process pool kept up with plain multiprocessing")


def plain_pool_time(count, units):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(pool_tasks.plain_work, [1, 1])
        started = time.monotonic()
        pool.map(pool_tasks.plain_work, [units] * count, chunksize=1)
        return time.monotonic() - started


def test_parity_soft_limit_interrupts_time_sleep_in_a_child(client, start_worker, queue_name):
    pool_worker(start_worker, queue_name, pool="process", concurrency=1)
    task_id = client.submit("pool_tasks.nap", [5], queue=queue_name, soft_time_limit=1)
    result = client.result(task_id, timeout=20)
    record(f"soft limit 1 s around time.sleep(5) in a child: raised after {result['interrupted_after']:.3f}s")
    assert 0.9 <= result["interrupted_after"] <= 1.2


def test_soft_limit_unhandled_fails_the_attempt(client, start_worker, queue_name):
    pool_worker(start_worker, queue_name, pool="process", concurrency=1)
    task_id = client.submit("pool_tasks.burn", [3], queue=queue_name, soft_time_limit=0.5, max_retries=0)
    task = client.wait(task_id, timeout=20)
    assert conveyor.TaskState.from_proto(task.state) == "FAILURE"
    assert task.error.type == "SoftTimeLimitExceeded"


def test_hard_limit_kills_and_replaces_the_child_at_once(client, start_worker, queue_name):
    worker = pool_worker(start_worker, queue_name, pool="process", concurrency=1)
    first = client.result(client.submit("pool_tasks.pid", queue=queue_name), timeout=30)
    task_id = client.submit("pool_tasks.nap", [30], queue=queue_name, time_limit=1, max_retries=0)
    running = wait_for_state(client, task_id, {"RUNNING"}, timeout=10)
    running_at = time.monotonic()
    task = client.wait(task_id, timeout=20)
    waited = time.monotonic() - running_at - 1.0
    # Server clocks: from the RUNNING record to the recorded failure, less the limit.
    started = running.updated_at.seconds + running.updated_at.nanos / 1e9
    finished = task.finished_at.seconds + task.finished_at.nanos / 1e9
    reported = finished - started - 1.0
    record(f"hard limit 1 s: attempt recorded {reported:.3f}s after the limit (seen by a waiting client {waited:.3f}s after)")
    assert task.error.type == "TimeLimitExceeded"
    assert reported <= 1.0 and waited <= 1.0
    wait_until(lambda: first not in worker.worker._processes.pids(), 5, "the killed child to be gone")
    second = client.result(client.submit("pool_tasks.pid", queue=queue_name), timeout=30)
    assert second != first  # the killed child was replaced
    assert worker.worker._processes.replaced >= 1


def test_crashed_child_fails_only_its_task(client, start_worker, queue_name):
    pool_worker(start_worker, queue_name, pool="process", concurrency=2)
    warm_up(client, queue_name, 2)
    survivor = client.submit("pool_tasks.nap", [1.0], queue=queue_name)
    started = time.monotonic()
    crashed = client.submit("pool_tasks.crash", [3], queue=queue_name, max_retries=0)
    task = client.wait(crashed, timeout=20)
    assert time.monotonic() - started < 2.0  # at once, not after a lease expiry
    assert task.error.type == "WorkerLostError"
    assert "exit code 3" in task.error.message
    assert client.result(survivor, timeout=20)["slept"] == 1.0
    assert isinstance(client.result(client.submit("pool_tasks.pid", queue=queue_name), timeout=30), int)


def test_revoke_terminate_kills_the_child(app_for_pool, client, start_worker, queue_name):
    pool_worker(start_worker, queue_name, pool="process", concurrency=1)
    result = app_for_pool.send_task("pool_tasks.nap", [30], queue=queue_name)
    wait_for_state(client, result.id, {"RUNNING"}, timeout=15)
    assert result.revoke(terminate=True)
    task = wait_for_state(client, result.id, {"CANCELLED"}, timeout=5)
    assert conveyor.TaskState.from_proto(task.state) == "REVOKED"
    assert isinstance(client.result(client.submit("pool_tasks.pid", queue=queue_name), timeout=30), int)


def test_max_tasks_per_child(client, start_worker, queue_name):
    pool_worker(start_worker, queue_name, pool="process", concurrency=1, max_tasks_per_child=2)
    pids = [client.result(client.submit("pool_tasks.pid", queue=queue_name), timeout=30) for _ in range(4)]
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[1] != pids[2], pids


def test_max_memory_per_child(client, start_worker, queue_name):
    pool_worker(start_worker, queue_name, pool="process", concurrency=1, max_memory_per_child=150_000)
    small = client.result(client.submit("pool_tasks.pid", queue=queue_name), timeout=30)
    big = client.result(client.submit("pool_tasks.hog", [200], queue=queue_name), timeout=30)
    after = client.result(client.submit("pool_tasks.pid", queue=queue_name), timeout=30)
    assert small == big != after


def _child_peak(results) -> None:
    from conveyor._process import _peak_rss_kib  # noqa: PLC0415

    results.put(_peak_rss_kib())


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux only")
def test_child_peak_memory_excludes_the_parents_peak():
    # Linux carries a parent's peak RSS over fork and exec into the child's
    # ru_maxrss: measured that way, a worker that once peaked high (large
    # payloads) would retire its children after every task.
    hog = bytearray(200 * 1024 * 1024)
    hog[:: 4096] = b"x" * len(hog[:: 4096])
    del hog
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_child_peak, args=(results,))
    child.start()
    peak = results.get(timeout=30)
    child.join(10)
    assert 0 < peak < 150_000, f"child peak {peak} KiB"


def test_cpu_bound_child_keeps_its_lease(client, start_worker, queue_name):
    # The test server's lease TTL is 1 s: the task burns 3.5 s of CPU.
    pool_worker(start_worker, queue_name, pool="process", concurrency=1)
    task_id = client.submit("pool_tasks.burn", [3.5], queue=queue_name, max_retries=0)
    client.result(task_id, timeout=30)
    task = client.get(task_id)
    record(f"cpu-bound task of 3.5 s under a 1 s lease TTL: attempt {task.attempt}, failures {task.failures}")
    assert task.attempt == 1 and task.failures == 0


def test_progress_and_request_from_a_child(client, start_worker, queue_name):
    pool_worker(start_worker, queue_name, pool="process", concurrency=1)
    task_id = client.submit("pool_tasks.report", [3], queue=queue_name)
    states = set()
    for task in client.watch(task_id, timeout=30):
        if task.HasField("progress") and task.progress.state:
            states.add(task.progress.state)
    result = client.result(task_id, timeout=5)
    assert states == {"STEP"}
    assert result["retries"] == 0 and result["current"] and result["pid"] != os.getpid()


def test_per_task_pool_override_and_asyncio_pool(client, start_worker, queue_name):
    pool_worker(start_worker, queue_name, pool="asyncio", concurrency=2)
    in_child = client.result(client.submit("pool_tasks.in_child", queue=queue_name), timeout=30)
    on_loop = client.result(client.submit("pool_tasks.on_loop", queue=queue_name), timeout=30)
    in_thread = client.result(client.submit("pool_tasks.pid", queue=queue_name), timeout=30)
    assert in_child != os.getpid() and on_loop == os.getpid() == in_thread


def test_unimportable_handler_is_refused_at_start(server, queue_name):
    def local(x):
        return x

    worker = conveyor.Worker(server, queues=[queue_name], pool="process")
    worker.register("local", local)
    with pytest.raises(ValueError, match="define it at module level"):
        worker.run(install_signal_handlers=False)


@pytest.fixture
def app_for_pool(server):
    with conveyor.Conveyor(server) as app:
        yield app
