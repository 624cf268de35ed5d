"""Turns bench/results/raw/*.json (one per round, system, config, workload)
into results.json, results.md and latency.png. Called by bench/run."""

import argparse
import glob
import json
import math
import os
import statistics
from datetime import datetime, timezone

# Column order and labels.
SYSTEMS = [("conveyor", "Conveyor"), ("bullmq", "BullMQ"), ("celery", "Celery")]


def load(raw):
    runs = []
    for path in sorted(glob.glob(os.path.join(raw, "*.json"))):
        with open(path) as f:
            text = f.read().strip()
        if not text:
            continue
        figures = json.loads(text.splitlines()[-1])
        meta_path = path[: -len(".json")] + ".meta"
        meta = {}
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
        figures["round"] = meta.get("round")
        figures["load"] = meta.get("load")
        figures["elapsed_s"] = meta.get("elapsed_s")
        runs.append(figures)
    return runs


def flatten(figures, prefix=""):
    """Numeric figures as {dotted.name: value}; None kept (a figure not
    reached), lists and samples left out."""
    out = {}
    for key, value in figures.items():
        if key in ("samples_ms", "sweep", "redis_commands", "round", "elapsed_s"):
            continue
        name = prefix + key
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, bool):
            out[name] = value
        elif isinstance(value, (int, float)) or value is None:
            out[name] = value
    return out


def stats(values):
    present = [v for v in values if v is not None and not isinstance(v, bool)]
    if not present:
        return {"median": None, "min": None, "max": None, "missing": len(values)}
    return {
        "median": statistics.median(present),
        "min": min(present),
        "max": max(present),
        "missing": len(values) - len(present),
    }


def group(runs):
    groups = {}
    for run in runs:
        key = (run["system"], run["config"], run["workload"])
        groups.setdefault(key, []).append(run)
    out = []
    for (system, config, workload), members in sorted(groups.items()):
        members.sort(key=lambda r: r.get("round") or 0)
        names = sorted({n for m in members for n in flatten(m)})
        figures = {}
        for name in names:
            values = [flatten(m).get(name) for m in members]
            present = [v for v in values if v is not None]
            if present and all(isinstance(v, bool) for v in present):
                figures[name] = {"all": all(values), "values": values}
            else:
                figures[name] = {**stats(values), "values": values}
        record = {
            "system": system,
            "config": config,
            "workload": workload,
            "rounds": len(members),
            "figures": figures,
        }
        if workload == "w3":
            record["sweeps"] = [m.get("sweep", []) for m in members]
        if workload == "w1":
            record["redis_commands_round1"] = members[0].get("redis_commands")
        for key in ("note",):
            if members[0].get(key):
                record[key] = members[0][key]
        out.append(record)
    return out


def columns(records):
    seen = []
    for system, _ in SYSTEMS:
        for r in records:
            if r["system"] == system and (system, r["config"]) not in seen:
                seen.append((system, r["config"]))
    return seen


def label(system, config):
    name = dict(SYSTEMS).get(system, system)
    if system == "conveyor":
        procs, _, slots = config.partition("x")
        return f"Conveyor ({procs}×{slots})" if slots else f"Conveyor ({config})"
    if system == "bullmq":
        return f"BullMQ ({config.replace('1 process, ', '')})"
    return f"{name} ({config})"


def fmt(value, kind):
    if value is None:
        return "—"
    if kind == "rate":
        return f"{value:,.0f}"
    if kind == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:,.0f}"
    if kind == "s":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if kind == "bytes":
        return f"{value:,.0f}"
    return str(value)


def cell(record, name, kind):
    if record is None:
        return ""
    figure = record["figures"].get(name)
    if figure is None or "median" not in figure:
        return "—"
    if figure["median"] is None:
        if record["workload"] == "w4":
            cap = record["figures"].get("cap_s", {}).get("median")
            got = record["figures"].get("released" if "released" in name else "done", {}).get("median")
            held = record["figures"].get("held_at_kill", {}).get("median")
            return f"not within {cap:g} s ({fmt(got, 'rate')}/{fmt(held, 'rate')})"
        return "not reached"
    if name == "max_sustainable_rate" and figure["median"] == 0:
        rate = record["figures"].get("rate", {}).get("median")
        return f"< {fmt(rate, 'rate')} (p99 or rate missed at {fmt(rate, 'rate')}/s)"
    text = fmt(figure["median"], kind)
    if record["rounds"] > 1 and figure["min"] != figure["max"]:
        text += f" ({fmt(figure['min'], kind)}–{fmt(figure['max'], kind)})"
    if figure.get("missing"):
        text += f" [{figure['missing']} not reached]"
    return text


def find(records, system, config, workload):
    for r in records:
        if (r["system"], r["config"], r["workload"]) == (system, config, workload):
            return r
    return None


def median_of(records, system, config, workload, name):
    r = find(records, system, config, workload)
    if r is None or name not in r["figures"]:
        return None
    return r["figures"][name].get("median")


ROWS = [
    # (workload, row label, figure, kind)
    ("w1", "W1 drain: tasks/s", "tasks_per_s", "rate"),
    ("w1", "W1 enqueue: tasks/s (before the drain)", "enqueue_per_s", "rate"),
    ("w2", "W2 round trip: p50 ms", "p50_ms", "ms"),
    ("w2", "W2 round trip: p90 ms", "p90_ms", "ms"),
    ("w2", "W2 round trip: p99 ms", "p99_ms", "ms"),
    ("w2", "W2 round trip: max ms", "max_ms", "ms"),
    ("w3", "W3 at {rate}/s: p50 ms", "p50_ms", "ms"),
    ("w3", "W3 at {rate}/s: p99 ms", "p99_ms", "ms"),
    ("w3", "W3 at {rate}/s: achieved tasks/s", "achieved_rate", "rate"),
    ("w3", "W3 at {rate}/s: p50 ms seen by the producer's WaitTask (Conveyor)", "observed.p50_ms", "ms"),
    ("w3", "W3 at {rate}/s: p99 ms seen by the producer's WaitTask (Conveyor)", "observed.p99_ms", "ms"),
    ("w3", "W3 max sustainable rate, tasks/s", "max_sustainable_rate", "rate"),
    ("w4", "W4 leases held at the kill", "held_at_kill", "rate"),
    ("w4", "W4 kill → all re-leased, s", "all_released_s", "s"),
    ("w4", "W4 kill → all done, s", "all_done_s", "s"),
    ("w1", "Redis bytes per queued task", "memory.bytes_per_task", "bytes"),
    ("w1", "payload bytes per task (arguments as sent)", "memory.payload_bytes", "bytes"),
]


def acceptance(records):
    """Issue 3's acceptance checks, from medians."""
    cv = [c for s, c in columns(records) if s == "conveyor"]
    if not cv:
        return []
    cv = cv[0]
    bull = next((c for s, c in columns(records) if s == "bullmq"), None)
    celeries = [c for s, c in columns(records) if s == "celery"]
    rows = []

    def add(what, value, ok):
        rows.append((what, value, "pass" if ok else "FAIL"))

    w1 = median_of(records, "conveyor", cv, "w1", "tasks_per_s")
    if bull and w1:
        b = median_of(records, "bullmq", bull, "w1", "tasks_per_s")
        if b:
            add("W1 throughput ≥ 2× BullMQ", f"{w1 / b:.2f}×", w1 >= 2 * b)
    if celeries and w1:
        best = max((median_of(records, "celery", c, "w1", "tasks_per_s") or 0) for c in celeries)
        if best:
            add("W1 throughput ≥ 15× Celery (its faster config)", f"{w1 / best:.1f}×", w1 >= 15 * best)
    if bull:
        p50 = median_of(records, "conveyor", cv, "w2", "p50_ms")
        b50 = median_of(records, "bullmq", bull, "w2", "p50_ms")
        if p50 and b50:
            add("W2 p50 ≤ ½ BullMQ's", f"{p50:.2f} vs {b50:.2f} ms", p50 <= b50 / 2)
        p99 = median_of(records, "conveyor", cv, "w2", "p99_ms")
        b99 = median_of(records, "bullmq", bull, "w2", "p99_ms")
        if p99 and b99:
            add("W2 p99 ≤ BullMQ's", f"{p99:.2f} vs {b99:.2f} ms", p99 <= b99)
    p99 = median_of(records, "conveyor", cv, "w3", "p99_ms")
    if p99 is not None:
        add("W3 p99 at 500/s ≤ 2 ms", f"{p99:.2f} ms", p99 <= 2)
    if bull:
        m = median_of(records, "conveyor", cv, "w3", "max_sustainable_rate")
        b = median_of(records, "bullmq", bull, "w3", "max_sustainable_rate")
        if m is not None and b:
            add("W3 max sustainable rate ≥ 2× BullMQ's", f"{m:,.0f} vs {b:,.0f}/s", m >= 2 * b)
    w4 = find(records, "conveyor", cv, "w4")
    if w4 and "all_released_s" in w4["figures"]:
        f = w4["figures"]["all_released_s"]
        worst = None if f["missing"] or f["max"] is None else f["max"]
        add("W4 all killed leases re-leased within 1 s (worst round)",
            "not all" if worst is None else f"{worst:.3f} s", worst is not None and worst <= 1)
    mem = median_of(records, "conveyor", cv, "w1", "memory.bytes_per_task")
    payload = median_of(records, "conveyor", cv, "w1", "memory.payload_bytes")
    if mem is not None and payload is not None:
        limit = 2 * payload + 250
        add("Redis bytes per queued task ≤ 2× payload + 250",
            f"{mem:,.0f} B vs {limit:,.0f} B limit (payload {payload:.0f} B)", mem <= limit)
    return rows


W5_ROWS = [
    # (row label, figure, kind); "speedup" and "ok" are worked out per cell
    ("W5 chord of {chord:,} `add` → `tsum`: submit, s", "chord_submit_s", "s"),
    ("W5 chord: submit → callback's outcome stored, s", "chord_s", "s"),
    ("W5 chord: Conveyor's speedup (this system's s / Conveyor's)", "chord_s", "speedup"),
    ("W5 chord: callback got all {chord:,} results, right sum (every round)", "chord_ok", "ok"),
    ("W5 chain of {chain} `add`: submit → last step's outcome stored, s", "chain_s", "s"),
    ("W5 chain: step → step p50 ms", "chain_step_p50_ms", "ms"),
    ("W5 chain: step → step p99 ms", "chain_step_p99_ms", "ms"),
]


def w5_cell(record, name, kind, conveyor_chord_s):
    if record is None:
        return ""
    figure = record["figures"].get(name)
    if kind == "ok":
        if figure is None or "all" not in figure:
            return "—"
        bad = sum(1 for v in figure["values"] if v is not True)
        return "yes" if bad == 0 else f"**no** ({bad} of {len(figure['values'])} rounds)"
    if figure is None or figure.get("median") is None:
        return "—"  # not measured (a driver that skips a part says why in its note)
    if kind == "speedup":
        if record["system"] == "conveyor" or not conveyor_chord_s:
            return ""
        return f"{figure['median'] / conveyor_chord_s:.1f}×"
    return cell(record, name, kind)


def w5_table(records):
    cols = [(s, c) for s, c in columns(records) if find(records, s, c, "w5")]
    if not cols:
        return []
    cv = next((c for s, c in cols if s == "conveyor"), None)
    conveyor_chord_s = median_of(records, "conveyor", cv, "w5", "chord_s") if cv else None
    chord = chain = None
    for s, c in cols:
        r = find(records, s, c, "w5")
        chord = chord or r["figures"].get("chord_tasks", {}).get("median")
        chain = chain or r["figures"].get("chain_steps", {}).get("median")
    out = [
        "### W5 workflows: a chord and a chain",
        "",
        "| | " + " | ".join(label(s, c) for s, c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for row_label, name, kind in W5_ROWS:
        if kind == "speedup" and conveyor_chord_s is None:
            continue
        text = row_label.format(chord=int(chord or 0), chain=int(chain or 0))
        cells = [w5_cell(find(records, s, c, "w5"), name, kind, conveyor_chord_s) for s, c in cols]
        out.append(f"| {text} | " + " | ".join(cells) + " |")
    out.append("")
    checks = w5_acceptance(records)
    if checks:
        out += ["#### W5 acceptance, from these medians", "", "| check | measured | |", "|---|---|---|"]
        out += [f"| {a} | {b} | {c} |" for a, b, c in checks]
        out.append("")
    return out


def w5_acceptance(records):
    """The workflow benchmark's acceptance checks, from medians. A chord whose
    callback missed a result (in any round) fails them."""
    cv = next((c for s, c in columns(records) if s == "conveyor" and find(records, s, c, "w5")), None)
    if cv is None:
        return []
    mine = median_of(records, "conveyor", cv, "w5", "chord_s")
    if not mine:
        return []
    ok = find(records, "conveyor", cv, "w5")["figures"].get("chord_ok", {}).get("values", [])
    complete = bool(ok) and all(v is True for v in ok)
    rows = []

    def add(what, other, factor, whose):
        ratio = other / mine
        text = f"{ratio:.1f}× ({whose} {fmt(other, 's')} s, Conveyor {fmt(mine, 's')} s)"
        if not complete:
            text += "; Conveyor's callback missed results"
        rows.append((what, text, "pass" if ratio >= factor and complete else "FAIL"))

    celeries = [c for s, c in columns(records) if s == "celery"]
    times = [t for t in (median_of(records, "celery", c, "w5", "chord_s") for c in celeries) if t]
    if times:
        add("W5 chord ≥ 20× faster than Celery's (its faster config)", min(times), 20, "Celery")
    bull = next((c for s, c in columns(records) if s == "bullmq"), None)
    b = median_of(records, "bullmq", bull, "w5", "chord_s") if bull else None
    if b:
        add("W5 chord ≥ 3× faster than BullMQ's flow", b, 3, "BullMQ")
    return rows


def commands_table(records):
    lines = []
    for system, config in columns(records):
        r = find(records, system, config, "w1")
        if not r or not r.get("redis_commands_round1"):
            continue
        tasks = r["figures"].get("tasks", {}).get("median") or 1
        cmds = {k: v for k, v in r["redis_commands_round1"].items()
                if k not in ("info", "config|resetstat")}
        calls = sum(v["calls"] for v in cmds.values())
        usec = sum(v["usec"] for v in cmds.values())
        top = sorted(cmds.items(), key=lambda kv: -kv[1]["usec"])[:6]
        top_text = ", ".join(
            f"{k} {v['calls'] / tasks:.2f} ({v['usec'] / tasks:.1f} µs)" for k, v in top)
        lines.append(f"| {label(system, config)} | {calls / tasks:.2f} | {usec / tasks:.1f} | {top_text} |")
    if not lines:
        return []
    return [
        "### Redis work per task during the W1 drain (round 1, `INFO commandstats`)",
        "",
        "| system | commands per task | Redis CPU µs per task | heaviest: calls per task (µs per task) |",
        "|---|---:|---:|---|",
        *lines,
        "",
        "Counted from the start of the enqueue to the moment the last outcome was seen, "
        "before the outcomes are read back. A Lua script counts as one `evalsha` plus the "
        "commands it runs.",
        "",
    ]


def sweeps_table(records):
    lines = []
    for system, config in columns(records):
        r = find(records, system, config, "w3")
        if not r:
            continue
        for round_index, sweep in enumerate(r.get("sweeps", []), 1):
            steps = []
            for step in sweep:
                mark = "ok" if step.get("sustained") else "no"
                p99 = step.get("p99_ms")
                p99_text = "—" if p99 is None else f"{p99:.1f}"
                steps.append(f"{step['rate']:,.0f}: {step.get('achieved_rate') or 0:,.0f}/s, "
                             f"p99 {p99_text} ms {mark}")
            lines.append(f"| {label(system, config)} | {round_index} | {'; '.join(steps) or '(500/s not sustained: no sweep)'} |")
    if not lines:
        return []
    return [
        "### W3 sweep steps (rate: achieved, p99, sustained?)",
        "",
        "| system | round | steps |",
        "|---|---:|---|",
        *lines,
        "",
    ]


def markdown(records, runs, args):
    cols = columns(records)
    rounds = max((r["rounds"] for r in records), default=0)
    rate = None
    duration = None
    for r in records:
        if r["workload"] == "w3":
            rate = r["figures"].get("rate", {}).get("median") or rate
            duration = r["figures"].get("duration_s", {}).get("median") or duration
    w1 = next((r for r in records if r["workload"] == "w1" and r["system"] == "conveyor"), None)
    n = int(w1["figures"]["tasks"]["median"]) if w1 else None
    loads = [r.get("load") for r in runs if r.get("load")]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Benchmark results",
        "",
        f"Produced by `{args.command}` at commit `{args.commit}` on {when}, in "
        f"{int(args.elapsed) // 60} min {int(args.elapsed) % 60} s. "
        f"{rounds} interleaved round(s); a cell is the median (min–max) over rounds. "
        f"All systems ran on one 2-core machine against the same Redis, flushed between runs. "
        f"Versions: {args.versions}.",
        "",
        "| | " + " | ".join(label(s, c) for s, c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for workload, row_label, name, kind in ROWS:
        if not any(find(records, s, c, workload) for s, c in cols):
            continue
        text = row_label.format(rate=f"{rate:,.0f}" if rate else "?")
        if workload == "w1" and name == "tasks_per_s" and n:
            text = f"W1 drain of {n:,} `add`: tasks/s"
        cells = [cell(find(records, s, c, workload), name, kind) for s, c in cols]
        out.append(f"| {text} | " + " | ".join(cells) + " |")
    out.append("")
    checks = acceptance(records)
    if checks:
        out += ["### Issue 3 acceptance, from these medians", "", "| check | measured | |", "|---|---|---|"]
        out += [f"| {a} | {b} | {c} |" for a, b, c in checks]
        out.append("")
    out += w5_table(records)
    out += commands_table(records)
    out += sweeps_table(records)
    out += [
        "### How to read it",
        "",
        "- **W1** enqueues every task first (Conveyor: `SubmitTasks` in batches of 1,000; "
        "BullMQ: `addBulk` of 1,000; Celery: one `send_task` each, it has no batch API), then "
        "starts the workers. Throughput is (N−1) / (last outcome stored − first outcome stored), "
        "from each system's own stored timestamps, so worker start-up time is not counted "
        "(`spawn_to_first_s` in results.json has it).",
        "- **W2** is one producer: submit one `add`, await its result (Conveyor `WaitTask`, "
        "BullMQ `waitUntilFinished` on QueueEvents, Celery `.delay().get()`), 1,000 times after a "
        "50-call warm-up, with idle workers ready.",
        f"- **W3** submits one task per call, open-loop, at a fixed rate"
        f"{f' for {duration:.0f} s' if duration else ''}. Latency runs from the instant a task was "
        "due to be submitted to the instant its outcome was stored (Conveyor `finished_at` and "
        "Celery `date_done`, both with microseconds; BullMQ `finishedOn`, whole milliseconds, so "
        "its figures read up to 1 ms low), so a producer that falls behind counts against its "
        "system. The sweep then tries higher rates until "
        "one is not sustained (achieved < 95 % of the rate or p99 > 100 ms); sweep steps read back "
        "a sample of 5,000 tasks. Conveyor's `observed` figures in results.json are the same "
        "latency seen by a `WaitTask` from the producer (µs-precise).",
        "- **W4**: a worker process holding long `sleep` tasks is SIGKILLed while a second one "
        "stands by. Conveyor and BullMQ: one process of concurrency 100 holds 100. Celery can only "
        "hold what it reserves (concurrency × prefetch multiplier 4) and needs `task_acks_late` to "
        "recover at all; its unacked messages come back only after the Redis transport's "
        "visibility timeout (3,600 s by default), so none is re-leased within the wait. BullMQ's "
        "stalled jobs come back once their lock has expired (30 s) and a stalled check has "
        "seen them twice (checks every 30 s). W4 on Celery and BullMQ runs in round 1 only: its figure is set by those timers.",
        "- **W5** runs, with the workers ready (the Celery and BullMQ drivers first run an unmeasured "
        "chord of 10), a chord: N `add(2, 3)` "
        "headers and a callback `tsum` that receives every header's result and sums them "
        "(Conveyor: one `SubmitWorkflow`; Celery: `chord(group(add.s(2, 3) …))(tsum.s())` on the "
        "Redis result backend, its native Redis chord, no `chord_unlock`; BullMQ: a `FlowProducer` "
        "parent `tsum` with N `add` children, reading `getChildrenValues()`). The figure runs from "
        "the start of the submission to the callback's outcome stored; the submission alone is its "
        "own row. Then a chain of 100 `add` steps, each taking the previous result (Celery "
        "`chain(add.s(0, 1), add.s(1), …)`; BullMQ has no chain: a flow tree nested 100 deep, each "
        "parent `add` taking its one child's value). Step → step latency is from one step's stored "
        "finish time to the next's (BullMQ's `finishedOn` in whole ms). The speedup row is each "
        "system's median chord time over Conveyor's; the checks compare with Celery's faster config.",
        "- **Memory** is `used_memory` after enqueueing W1's tasks minus before, per task, with "
        "no worker running. Payload: Conveyor counts its argument bytes (`2` and `3`, JSON), "
        "BullMQ its job data `{\"a\":2,\"b\":3}`, Celery its JSON body `[[2, 3], {}, {}]`.",
        f"- Load average (1, 5, 15 min) at the start of each workload ranged over "
        f"{min(loads) if loads else '?'} … {max(loads) if loads else '?'}: other work on the "
        "machine shows up in the numbers.",
        "",
    ]
    return "\n".join(out)


def chart(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [("w2", "W2 round trip (submit → result awaited)"),
              ("w3", "W3 at the fixed rate (due → outcome stored)")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, (workload, title) in zip(axes, panels):
        series = {}
        for run in runs:
            if run["workload"] != workload or not run.get("samples_ms"):
                continue
            key = label(run["system"], run["config"])
            series.setdefault(key, []).extend(s for s in run["samples_ms"] if s is not None)
        for key, samples in sorted(series.items()):
            samples = sorted(max(s, 0.01) for s in samples)
            ys = [(i + 0.5) / len(samples) for i in range(len(samples))]
            ax.plot(samples, ys, label=f"{key} (n={len(samples):,})", drawstyle="steps-post")
        ax.set_xscale("log")
        ax.set_yscale("logit")
        ticks = [0.1, 0.5, 0.9, 0.99, 0.999]
        ax.set_yticks(ticks)
        ax.set_yticklabels(["p10", "p50", "p90", "p99", "p99.9"])
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("latency, ms (log)")
        ax.set_ylabel("percentile")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Latency distributions (all rounds pooled)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def clean(value):
    """NaN and infinities become null, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--raw", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--command", default="bench/run")
    p.add_argument("--commit", default="unknown")
    p.add_argument("--versions", default="")
    p.add_argument("--elapsed", type=float, default=0)
    args = p.parse_args()
    runs = load(args.raw)
    records = group(runs)
    document = {
        "command": args.command,
        "commit": args.commit,
        "versions": args.versions,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": args.elapsed,
        "results": records,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(clean(document), f, indent=1, allow_nan=False)
        f.write("\n")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown(records, runs, args))
    chart(runs, os.path.join(args.out, "latency.png"))


if __name__ == "__main__":
    main()
