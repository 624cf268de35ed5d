"""Celery drivers for W1-W5, the counterparts of `conveyor-bench drive`.

    python driver.py w1|w2|w3|w4|w5 --config prefork|threads [options]

Prints one JSON object of figures on stdout. Spawns and kills its own
`celery worker` processes (each in its own process group, so that SIGKILL
takes the pool's children too). Outcome times are Celery's own `date_done`,
written by the worker when it stores the result in the Redis backend.
"""

import argparse
import gc
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import redis
from celery import Celery, chain, chord, group

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import benchtasks  # noqa: E402

CONFIGS = {
    # name: (pool, concurrency)
    "prefork": ("prefork", 2),
    "threads": ("threads", 8),
}
PREFETCH_MULTIPLIER = 4  # Celery's default worker_prefetch_multiplier
META = "celery-task-meta-"
W2_WARMUP = 50
W5_WARMUP_CHORD = 10  # headers of the chord run (and not measured) before W5's


def now():
    return time.time()


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    rank = math.ceil(q / 100.0 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def r3(value):
    return None if value is None or math.isnan(value) else round(value, 3)


def summary(samples):
    s = sorted(samples)
    return {
        "n": len(s),
        "p50_ms": r3(percentile(s, 50)),
        "p90_ms": r3(percentile(s, 90)),
        "p99_ms": r3(percentile(s, 99)),
        "max_ms": r3(s[-1] if s else float("nan")),
        "mean_ms": r3(sum(s) / len(s) if s else float("nan")),
    }


def parse_date(text):
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


class Bench:
    def __init__(self, args):
        self.args = args
        self.pool, self.concurrency = CONFIGS[args.config]
        self.redis = redis.Redis.from_url(args.redis)
        # Producers that do not wait use an app without a result backend:
        # with one, Celery's Redis backend subscribes to every sent task's
        # result channel, which would slow the producer for nothing here.
        self.sender = Celery("sender", broker=args.redis)
        self.sender.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
        self.workers = []

    # -- worker processes -------------------------------------------------
    def spawn(self, count=None, extra_env=None):
        env = dict(os.environ, BENCH_REDIS=self.args.redis)
        env.update(extra_env or {})
        procs = []
        for _ in range(count or 1):
            index = len(self.workers) + len(procs)
            command = [
                sys.executable, "-W", "ignore", "-m", "celery", "-A", "benchtasks", "worker",
                f"--pool={self.pool}", f"--concurrency={self.concurrency}",
                "--loglevel=WARNING", "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-n", f"bench{index}-{os.getpid()}@%h",
            ]
            procs.append(subprocess.Popen(
                command, cwd=HERE, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, start_new_session=True))
        self.workers.extend(procs)
        return procs

    def wait_ready(self, count, timeout=60):
        deadline = now() + timeout
        while now() < deadline:
            replies = benchtasks.app.control.ping(timeout=0.3)
            if len(replies) >= count:
                return
        raise SystemExit(f"celery workers not ready after {timeout} s")

    @staticmethod
    def kill(procs):
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in procs:
            proc.wait()

    def kill_all(self):
        self.kill(self.workers)
        self.workers = []

    # -- reading outcomes -------------------------------------------------
    def metas(self, ids):
        """date_done (epoch s) per id, None where no outcome is stored."""
        out = []
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            for raw in self.redis.mget([META + i for i in chunk]):
                if raw is None:
                    out.append(None)
                    continue
                meta = json.loads(raw)
                if meta.get("status") != "SUCCESS":
                    out.append(None)
                    continue
                out.append(parse_date(meta["date_done"]))
        return out

    def wait_done(self, ids, timeout):
        """Waits until every id has an outcome; returns their times or None."""
        deadline = now() + timeout
        done = [None] * len(ids)
        pending = list(range(len(ids)))
        while pending:
            times = self.metas([ids[i] for i in pending])
            still = []
            for i, t in zip(pending, times):
                if t is None:
                    still.append(i)
                else:
                    done[i] = t
            pending = still
            if pending:
                if now() > deadline:
                    return None
                time.sleep(0.02)
        return done

    def outcome(self, task_id, timeout):
        """The stored meta of one task once it is SUCCESS; fails on FAILURE
        or when nothing is stored within timeout."""
        deadline = now() + timeout
        while True:
            raw = self.redis.get(META + task_id)
            if raw is not None:
                meta = json.loads(raw)
                if meta.get("status") == "SUCCESS":
                    return meta
                if meta.get("status") == "FAILURE":
                    raise SystemExit(f"task {task_id} failed: {meta.get('result')}")
            if now() > deadline:
                raise SystemExit(f"task {task_id} has no outcome after {timeout} s")
            time.sleep(0.02)

    def command_stats(self):
        stats = self.redis.info("commandstats")
        return {name.removeprefix("cmdstat_"): {"calls": v["calls"], "usec": v["usec"]}
                for name, v in stats.items()}

    def used_memory(self):
        return int(self.redis.info("memory")["used_memory"])

    # -- workloads --------------------------------------------------------
    def w1(self):
        n = self.args.tasks
        before = self.used_memory()
        ids = []
        started = time.perf_counter()
        with self.sender.producer_or_acquire() as producer:
            for _ in range(n):
                ids.append(self.sender.send_task("add", (2, 3), producer=producer).id)
        enqueue_s = time.perf_counter() - started
        after = self.used_memory()
        spawned_at = now()
        self.spawn(1)
        # Only the last task's key is looked at while the workers drain.
        if self.wait_done(ids[-1:], 600) is None:
            raise SystemExit("the last task did not finish")
        commands = self.command_stats()
        times = self.wait_done(ids, 120)
        self.kill_all()
        if times is None:
            raise SystemExit("not every task finished")
        first, last = min(times), max(times)
        return {
            "tasks": n,
            "tasks_per_s": r3((n - 1) / (last - first)),
            "drain_s": r3(last - first),
            "spawn_to_last_s": r3(last - spawned_at),
            "spawn_to_first_s": r3(first - spawned_at),
            "enqueue_s": r3(enqueue_s),
            "enqueue_per_s": r3(n / enqueue_s),
            "redis_commands": commands,
            "memory": {
                "used_before": before,
                "used_after": after,
                "bytes_per_task": r3((after - before) / n),
                "payload_bytes": len(json.dumps([[2, 3], {}, {}])),
            },
        }

    def w2(self):
        self.spawn(1)
        self.wait_ready(1)
        samples = []
        for i in range(W2_WARMUP + self.args.round_trips):
            started = time.perf_counter()
            result = benchtasks.add.delay(2, 3).get(timeout=30)
            elapsed = (time.perf_counter() - started) * 1e3
            assert result == 5, result
            if i >= W2_WARMUP:
                samples.append(elapsed)
        self.kill_all()
        figures = summary(samples)
        if self.args.samples:
            figures["samples_ms"] = [r3(s) for s in samples]
        return figures

    def step(self, rate, duration, sample):
        n = max(2, round(rate * duration))
        ids = []
        with self.sender.producer_or_acquire() as producer:
            start = time.perf_counter()
            start_wall = now()
            for i in range(n):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                ids.append(self.sender.send_task("add", (2, 3), producer=producer).id)
            producer_s = time.perf_counter() - start
        if sample >= n:
            picked = list(range(n))
        else:
            edge = min(100, n // 2)
            middle = random.sample(range(edge, n - edge), min(max(sample - 2 * edge, 0), n - 2 * edge))
            picked = sorted(set(range(edge)) | set(range(n - edge, n)) | set(middle))
        cap = max(10.0, 2 * duration)
        tail = [ids[i] for i in picked[-100:]]
        latencies, first, last = [], math.inf, -math.inf
        tail_done = self.wait_done(tail, cap) is not None
        unfinished = n
        if tail_done:
            times = self.wait_done([ids[i] for i in picked], 10)
            unfinished = 0
            if times is None:
                unfinished = len(picked)
            else:
                for i, t in zip(picked, times):
                    latencies.append((t - (start_wall + i / rate)) * 1e3)
                    first, last = min(first, t), max(last, t)
        achieved = (n - 1) / (last - first) if last > first else 0.0
        p99 = percentile(sorted(latencies), 99)
        ok = (tail_done and unfinished == 0 and achieved >= self.args.min_achieved * rate
              and p99 <= self.args.max_p99_ms)
        figures = summary(latencies)
        figures.update({
            "rate": rate, "tasks": n, "errors": 0, "unfinished": unfinished,
            "producer_rate": r3(n / producer_s), "achieved_rate": r3(achieved),
            "sustained": ok,
        })
        return figures, latencies

    def w3(self):
        args = self.args
        self.spawn(1)
        self.wait_ready(1)
        self.step(args.rate, 0.5, 0)  # warm-up
        main, latencies = self.step(args.rate, args.duration, math.inf)
        best = args.rate if main["sustained"] else 0.0
        sweep = []
        if main["sustained"]:
            for rate in [r for r in args.sweep if r > args.rate]:
                time.sleep(0.3)
                step, _ = self.step(rate, args.step_duration, args.sample)
                sweep.append(step)
                if not step["sustained"]:
                    break
                best = rate
        self.kill_all()
        if args.samples:
            main["samples_ms"] = [r3(s) for s in latencies]
        main.update({
            "sweep": sweep, "max_sustainable_rate": best,
            "duration_s": args.duration, "step_duration_s": args.step_duration,
        })
        return main

    def w4(self):
        args = self.args
        env = {"BENCH_ACKS_LATE": "1"}
        # A worker reserves concurrency x prefetch multiplier messages; it
        # cannot hold more.
        n = min(args.leases, self.concurrency * PREFETCH_MULTIPLIER)
        ids = [self.sender.send_task("sleep", (args.sleep,)).id for _ in range(n)]
        victim = self.spawn(1, env)
        deadline = now() + 30
        while self.redis.hlen("unacked") < n or self.redis.llen("celery") > 0:
            if now() > deadline:
                raise SystemExit("the first worker did not reserve every task")
            time.sleep(0.01)
        self.spawn(1, env)
        self.wait_ready(2)
        held = self.redis.hlen("unacked")
        killed_at = now()
        self.kill(victim)
        # Only the tasks the victim still held count (a short sleep may have
        # let it finish some before the kill).
        finished_before = {i for i, t in zip(ids, self.metas(ids)) if t is not None}
        ids = [i for i in ids if i not in finished_before]
        n = len(ids)
        wanted = set(ids)
        released, done = {}, {}
        cap = killed_at + args.recovery_cap
        while len(done) < n and now() < cap:
            for entry in self.redis.lrange("bench:started", 0, -1):
                task_id, at = entry.decode().split()
                if task_id in wanted and float(at) > killed_at:
                    released.setdefault(task_id, float(at))
            for task_id, t in zip(ids, self.metas(ids)):
                if t is not None and t > killed_at:
                    done.setdefault(task_id, t)
            time.sleep(0.02)
        self.kill_all()
        rel = sorted(t - killed_at for t in released.values())
        fin = sorted(t - killed_at for t in done.values())
        return {
            "leases": n,
            "held_at_kill": held,
            "sleep_s": args.sleep,
            "released": len(rel),
            "all_released_s": r3(rel[-1]) if len(rel) == n else None,
            "first_released_s": r3(rel[0]) if rel else None,
            "median_released_s": r3(percentile(rel, 50)) if rel else None,
            "done": len(fin),
            "all_done_s": r3(fin[-1]) if len(fin) == n else None,
            "cap_s": args.recovery_cap,
            "note": (f"task_acks_late=True; a worker reserves concurrency x prefetch "
                     f"({self.concurrency}x{PREFETCH_MULTIPLIER}={self.concurrency * PREFETCH_MULTIPLIER}); "
                     "unacked messages return only after the broker visibility_timeout "
                     "(3600 s by default), so none comes back within the cap"),
        }

    def run_chord(self, n):
        """chord(n x add(2, 3)) -> tsum, the canonical call with the Redis
        result backend (Celery's native Redis chord, no chord_unlock task).
        Returns (submit seconds, submit start -> callback's date_done seconds,
        the callback's result, how many results it received)."""
        self.redis.delete("bench:tsum:received")
        header = group([benchtasks.add.s(2, 3) for _ in range(n)])
        started_wall = now()
        started = time.perf_counter()
        result = chord(header)(benchtasks.tsum.s())
        submit_s = time.perf_counter() - started
        meta = self.outcome(result.id, 600)
        received = self.redis.get("bench:tsum:received")
        return (submit_s, parse_date(meta["date_done"]) - started_wall, meta["result"],
                None if received is None else int(received))

    def w5(self):
        args = self.args
        self.spawn(1)
        self.wait_ready(1)
        self.run_chord(W5_WARMUP_CHORD)  # warm-up: pool children, connections
        n = args.chord_tasks
        submit_s, chord_s, total, received = self.run_chord(n)
        chord_ok = total == 5 * n and received == n

        # chain(add(0, 1), add(1), ...): each step gets the previous result as
        # its first argument; the worker sends the next step when one ends.
        steps = args.chain_steps
        signature = chain(benchtasks.add.s(0, 1), *[benchtasks.add.s(1) for _ in range(steps - 1)])
        started_wall = now()
        last = signature.apply_async()
        ids = []
        node = last
        while node is not None:
            ids.append(node.id)
            node = node.parent
        ids.reverse()
        final = self.outcome(last.id, 120)
        times = self.wait_done(ids, 10)
        self.kill_all()
        # The producer's backend keeps every result it subscribed to until it
        # is fulfilled; dropped here, each unsubscribes while the interpreter
        # is alive, not during its shutdown (where that fails noisily).
        for pending in benchtasks.app.backend._pending_results:
            pending.clear()
        del last, node
        gc.collect()
        if times is None:
            raise SystemExit("a chain step has no outcome although the last one has")
        gaps = sorted((b - a) * 1e3 for a, b in zip(times, times[1:]))
        return {
            "chord_tasks": n,
            "chord_submit_s": r3(submit_s),
            "chord_s": r3(chord_s),
            "chord_ok": chord_ok,
            "chord_received": received,
            "chord_sum": total,
            "chain_steps": steps,
            "chain_s": r3(times[-1] - started_wall),
            "chain_step_p50_ms": r3(percentile(gaps, 50)),
            "chain_step_p99_ms": r3(percentile(gaps, 99)),
            "chain_ok": final["result"] == steps and len(ids) == steps,
            "note": ("chord(group(add.s(2, 3) x N))(tsum.s()) on the Redis result backend; the producer "
                     "has the backend, so Celery subscribes to each header's result channel as it sends "
                     "it; chain: chain(add.s(0, 1), add.s(1), ...), each step sent by the worker that "
                     "ran the previous one; times from date_done"),
        }


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("workload", choices=["w1", "w2", "w3", "w4", "w5"])
    p.add_argument("--config", choices=sorted(CONFIGS), default="prefork")
    p.add_argument("--redis", default="redis://127.0.0.1:6391/0")
    p.add_argument("--tasks", type=int, default=20000)
    p.add_argument("--round-trips", type=int, default=1000)
    p.add_argument("--rate", type=float, default=500)
    p.add_argument("--duration", type=float, default=20)
    p.add_argument("--sweep", default="1000,2000,3000,5000,7500,10000,15000,20000,30000,50000")
    p.add_argument("--step-duration", type=float, default=5)
    p.add_argument("--sample", type=int, default=5000)
    p.add_argument("--min-achieved", type=float, default=0.95)
    p.add_argument("--max-p99-ms", type=float, default=100)
    p.add_argument("--leases", type=int, default=100)
    p.add_argument("--sleep", type=float, default=3.0)
    p.add_argument("--recovery-cap", type=float, default=10)
    p.add_argument("--chord-tasks", type=int, default=10000)
    p.add_argument("--chain-steps", type=int, default=100)
    p.add_argument("--samples", action="store_true")
    args = p.parse_args()
    args.sweep = [float(x) for x in args.sweep.split(",") if x]
    os.environ["BENCH_REDIS"] = args.redis
    benchtasks.app.conf.broker_url = args.redis
    benchtasks.app.conf.result_backend = args.redis
    bench = Bench(args)
    try:
        figures = getattr(bench, args.workload)()
    finally:
        bench.kill_all()
    pool, concurrency = CONFIGS[args.config]
    figures.update({"system": "celery", "config": f"{pool} {concurrency}", "workload": args.workload})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
