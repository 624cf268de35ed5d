"""docs/telemetry.md and deploy/grafana/conveyor-dashboard.json, checked
against real processes.

The dashboard and the metrics table: a busy `conveyor dev` (on Redis, so that
a second process, `conveyor serve dispatch`, can be killed while it holds a
lease for the dev server's scheduler to reap) with the example worker and the
traced example worker runs tasks that succeed, fail, are retried, cancelled,
expire and are reaped, meets a store error (a task's key overwritten), and
floods a subscriber that never reads until events are dropped. Its
`/metrics` then holds every metric; the dashboard may name no
other, the doc's table must list exactly these (types and labels too), and
every query of the dashboard must return data in a real Prometheus that
scrapes the server with the doc's scrape configuration.

The doc's commands: every `$ …` line of its console blocks runs, in order,
with the addresses of the test's servers in place of 50051, 9464 and 4317,
`conveyor` and `grpcurl` from this machine and `cargo run --example NAME` as
the prebuilt example binary, and its output is compared with the lines shown
under it (ids and times as wildcards, `…` for text left out, the same doc id
always the same real id). `conveyor dev` starts the server the commands after
it talk to; workers (`cargo run --example …`) and event listeners
(`conveyor events`, grpcurl's `WatchEvents`) run in the background: a worker
until it has printed the lines shown, a listener until the console block
after its own has run (a second terminal, as the doc says), then its output
is compared. The trace the doc draws is compared with the spans an OTLP
receiver in the test got.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid

import pytest

from conftest import ROOT, Server, _conveyor_bin, start_worker, stop_process

OTEL = pathlib.Path(__file__).resolve().parent / "otel"
sys.path.insert(0, str(OTEL))

from otlp_sink import Span, SpanSink  # noqa: E402 - found through the path above

DOC = ROOT / "docs/telemetry.md"
DASHBOARD = ROOT / "deploy/grafana/conveyor-dashboard.json"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Where the doc's examples listen; the test's servers listen elsewhere.
DOC_GRPC = ("127.0.0.1:50051", "localhost:50051")
DOC_METRICS = "127.0.0.1:9464"
DOC_OTLP = "http://127.0.0.1:4317"


# --- small helpers ----------------------------------------------------------------------------


def free_port() -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port != 9464:  # dev's default: a developer's own server may want it
            return port


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def examples_dir() -> pathlib.Path:
    return _conveyor_bin().parent / "examples"


def example(name: str) -> str:
    path = examples_dir() / name
    assert path.exists(), f"{path} is missing: cargo build --workspace --examples builds it"
    return str(path)


def grpcurl() -> str:
    found = shutil.which("grpcurl") or os.path.expanduser("~/go/bin/grpcurl")
    assert pathlib.Path(found).exists(), "grpcurl is missing: scripts/test installs it with go install"
    return found


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: scripts/test installs it (Debian's prometheus package)"
    return found


def clean_env(**extra: str) -> dict:
    """This process's environment without OTEL_* and RUST_LOG (so the
    programs log at their default, info), plus extra."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("OTEL_") and key not in ("RUST_LOG", "CONVEYOR_ADDR")}
    env.update(extra)
    return env


def log_line(line: str) -> str:
    """A log line as the doc shows it: no colours, no timestamp."""
    line = ANSI.sub("", line).rstrip("\n")
    return re.sub(r"^\d{4}-\d\d-\d\dT[0-9:.]+Z", "", line).strip()


class Output:
    """Collects a process's stdout and stderr lines in threads."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._threads = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((process.stdout, self.stdout), (process.stderr, self.stderr))
                         if stream is not None]
        for thread in self._threads:
            thread.start()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, condition, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = condition()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; stdout:\n"
                                         + "\n".join(self.stdout) + "\nstderr:\n" + "\n".join(self.stderr))
                self._changed.wait(min(remaining, 0.1))

    def join(self, timeout: float = 5.0) -> None:
        for thread in self._threads:
            thread.join(timeout)


def stop(process: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- the doc ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Command:
    text: str
    expected: list[str]
    block: int


def console_blocks() -> list[list[Command]]:
    """The doc's console blocks: their `$ ` commands (backslash continuations
    joined) and the lines shown under each."""
    blocks: list[list[Command]] = []
    inside, continued = False, False
    for line in DOC.read_text().splitlines():
        if not inside:
            if line.strip() == "```console":
                inside = True
                blocks.append([])
            continue
        if line.strip() == "```":
            inside = False
            continue
        if continued:
            blocks[-1][-1].text += " " + line.strip().rstrip("\\").strip()
            continued = line.rstrip().endswith("\\")
        elif line.startswith("$ "):
            text = line[2:].rstrip()
            continued = text.endswith("\\")
            blocks[-1].append(Command(text.rstrip("\\").strip(), [], len(blocks) - 1))
        else:
            assert blocks[-1], f"output before any command in a console block: {line!r}"
            blocks[-1][-1].expected.append(line)
    return blocks


def fenced_after(marker: str, language: str) -> list[str]:
    """The lines of the first ```language block after the line containing marker."""
    lines = DOC.read_text().splitlines()
    start = next(index for index, line in enumerate(lines) if marker in line)
    opening = next(index for index in range(start, len(lines)) if lines[index].strip() == f"```{language}")
    closing = next(index for index in range(opening + 1, len(lines)) if lines[index].strip() == "```")
    return lines[opening + 1:closing]


def doc_scrape_config() -> str:
    return "\n".join(fenced_after("### Prometheus", "yaml")) + "\n"


def doc_metric_table() -> dict[str, tuple[str, frozenset[str]]]:
    """metric -> (type, labels) from the doc's table of metrics."""
    table = {}
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"`conveyor_[a-z_]+`", cells[0]):
            labels = frozenset(re.findall(r"`([a-z_]+)`", cells[2]))
            assert labels or cells[2] == "none", f"labels of {cells[0]}: {cells[2]!r}"
            table[cells[0].strip("`")] = (cells[1], labels)
    return table


# --- the expositions --------------------------------------------------------------------------


def families(exposition: str) -> dict[str, tuple[str, frozenset[str]]]:
    """metric family -> (type, label names but `le`) of a Prometheus text exposition."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE))
    labels: dict[str, set[str]] = {name: set() for name in types}
    for name, body in re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$", exposition, re.MULTILINE):
        family = next((f for f in (name, re.sub(r"_(bucket|sum|count)$", "", name)) if f in types), None)
        assert family is not None, f"sample {name} of no declared family"
        labels[family] |= set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', body)) - {"le"}
    return {name: (kind, frozenset(labels[name])) for name, kind in types.items()}


def series_names(exposition: str) -> set[str]:
    return set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{.*\})? \S+$", exposition, re.MULTILINE))


# Recorded by binaries built since the metered store (main 1937628); older
# ones record no store metric at all, and the checks below leave these out
# for them. Drop this once no such binary is tested.
STORE_METRICS = {"conveyor_store_call_duration_seconds", "conveyor_store_errors_total"}


def unrecorded(exposition: str) -> set[str]:
    """The documented metrics this server's binary cannot record."""
    return set() if "conveyor_store_call_duration_seconds_count" in exposition else STORE_METRICS


def sample_sum(exposition: str, name: str, **labels: str) -> float:
    total = 0.0
    for sample_labels, value in re.findall(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", exposition, re.MULTILINE):
        found = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', sample_labels))
        if all(found.get(key) == value_ for key, value_ in labels.items()):
            total += float(value)
    return total


# --- processes for the busy server --------------------------------------------------------------


@pytest.fixture(scope="module")
def sink():
    running = SpanSink.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """scripts/test's Redis (CONVEYOR_TEST_REDIS), or one of this module's own."""
    if os.environ.get("CONVEYOR_TEST_REDIS"):
        yield os.environ["CONVEYOR_TEST_REDIS"]
        return
    server = shutil.which("redis-server")
    assert server, "redis-server is missing: scripts/start-redis installs it"
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline and process.poll() is None, "redis-server did not start"
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}"
    stop(process)


def redis_command(url: str, *args: str) -> bytes:
    """One command to Redis, in its protocol, and the start of the reply."""
    parsed = urllib.parse.urlparse(url)
    commands = ([("AUTH", parsed.password)] if parsed.password else []) + [args]
    payload = "".join(f"*{len(command)}\r\n" + "".join(f"${len(arg.encode())}\r\n{arg}\r\n" for arg in command)
                      for command in commands)
    with socket.create_connection((parsed.hostname, parsed.port or 6379), timeout=5) as connection:
        connection.sendall(payload.encode())
        time.sleep(0.05)
        return connection.recv(4096)


class Dispatcher:
    """`conveyor serve dispatch` on the busy server's store: its leases
    outlive it when it is killed."""

    def __init__(self, store: str, prefix: str) -> None:
        self.process = subprocess.Popen(
            [str(_conveyor_bin()), "serve", "dispatch", "--listen", "127.0.0.1:0", "--store", store,
             "--redis-prefix", prefix, "--heartbeat-interval", "200ms", "--lease-ttl", "1s", "--track-started"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=clean_env(RUST_LOG="warn"))
        line = self.process.stdout.readline().strip()
        assert line.startswith("listening on "), f"unexpected first line {line!r}"
        self.url = "http://" + line.removeprefix("listening on ")


class Prometheus:
    """A real Prometheus scraping with the doc's configuration."""

    def __init__(self, config: str, directory: pathlib.Path) -> None:
        (directory / "prometheus.yml").write_text(config)
        self.address = f"127.0.0.1:{free_port()}"
        self.log = open(directory / "prometheus.log", "w")
        self.process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address={self.address}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params: str) -> object:
        url = f"http://{self.address}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        answer = json.loads(http_get(url))
        assert answer["status"] == "success", answer
        return answer["data"]

    def wait(self, what: str, fetch, timeout: float = 20.0):
        """fetch() until it returns something non-empty."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = fetch()
            except OSError:
                value = None
            if value:
                return value
            assert self.process.poll() is None, f"prometheus exited: see {self.log.name}"
            assert time.monotonic() < deadline, f"Prometheus never had data for {what}"
            time.sleep(0.25)

    def stop(self) -> None:
        stop(self.process)
        self.log.close()


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def flood_a_slow_subscriber(address: str, metrics_url: str) -> None:
    """Opens WatchEvents without reading it and submits batches until the
    server drops events for it."""
    import grpc
    from conveyor.v1 import results_service_pb2 as results, results_service_pb2_grpc as results_grpc
    from conveyor.v1 import submission_service_pb2 as submission, submission_service_pb2_grpc as submission_grpc
    from conveyor.v1 import task_pb2

    slow = grpc.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)])
    channel = grpc.insecure_channel(address)
    try:
        call = results_grpc.ResultsServiceStub(slow).WatchEvents(results.WatchEventsRequest(queues=["tele-flood"]))
        call.initial_metadata()  # subscribed
        stub = submission_grpc.SubmissionServiceStub(channel)
        batch = submission.SubmitTasksRequest(tasks=[
            task_pb2.TaskSpec(name="flood", options=task_pb2.TaskOptions(queue="tele-flood")) for _ in range(1000)])
        for _ in range(80):
            stub.SubmitTasks(batch, timeout=30)
            time.sleep(0.05)  # one message per batch
            if sample_sum(http_get(metrics_url), "conveyor_events_dropped_total") > 0:
                break
        else:
            raise AssertionError("80,000 events to a subscriber that never reads, and none dropped")
        call.cancel()
    finally:
        slow.close()
        channel.close()


def submit_expiring(address: str) -> None:
    """A task on a queue nobody serves, expiring 200 ms from now."""
    import grpc
    from conveyor.v1 import submission_service_pb2 as submission, submission_service_pb2_grpc as submission_grpc
    from conveyor.v1 import task_pb2
    from google.protobuf import timestamp_pb2

    expires = timestamp_pb2.Timestamp()
    expires.FromNanoseconds(time.time_ns() + 200_000_000)
    with grpc.insecure_channel(address) as channel:
        submission_grpc.SubmissionServiceStub(channel).SubmitTask(submission.SubmitTaskRequest(task=task_pb2.TaskSpec(
            name="add", options=task_pb2.TaskOptions(queue="tele-nobody", expires=expires))), timeout=10)


@dataclasses.dataclass
class Busy:
    server: Server
    metrics_url: str
    exposition: str
    prometheus: Prometheus


@pytest.fixture(scope="module")
def busy(sink, redis_url, tmp_path_factory):
    port = free_port()
    prefix = f"tele{uuid.uuid4().hex[:8]}:"
    server = Server("--store", redis_url, "--redis-prefix", prefix, "--metrics-listen", f"127.0.0.1:{port}",
                    env=clean_env(RUST_LOG="warn"))
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    # Prometheus first: it takes about 5 s to start scraping a new target.
    config = doc_scrape_config().replace(f'"{DOC_METRICS}"', f'"127.0.0.1:{port}"')
    config = re.sub(r"scrape_interval: \S+", "scrape_interval: 1s", config)
    try:
        prometheus = Prometheus(config, tmp_path_factory.mktemp("prometheus"))
    except BaseException:
        server.stop()
        raise
    try:
        dispatcher = Dispatcher(redis_url, prefix)
    except BaseException:
        prometheus.stop()
        server.stop()
        raise
    programs = {"worker": {
        "rust": [example("worker")],
        "traced": ["env", f"OTEL_EXPORTER_OTLP_ENDPOINT={sink.endpoint}", "OTEL_SERVICE_NAME=tele-busy-worker",
                   example("traced_worker")],
    }}
    workers = [
        start_worker(programs, "rust", server, "tele-plain", "tele-plain"),
        start_worker(programs, "traced", server, "tele-traced", "tele-traced"),
        start_worker(programs, "rust", dispatcher, "tele-reap", "tele-reap"),
    ]
    try:
        server.wait_for_worker("tele-plain")
        wait_for(lambda: "tele-traced" in server.workers(), 30, "the traced worker")
        wait_for(lambda: "tele-reap" in subprocess.run(
            [str(_conveyor_bin()), "workers", "--server", dispatcher.url], capture_output=True, text=True,
            timeout=30).stdout, 30, "the worker of the dispatcher to be killed")
        # Outcomes: succeeded, failed for good, retried, cancelled, expired.
        assert server.cli("submit", "add", "--arg", "2", "--arg", "3", "--queue", "tele-plain", "--wait").stdout == "5\n"
        failed = server.cli("submit", "fail", "--queue", "tele-plain", "--wait", check=False)
        assert failed.returncode == 1 and "ValueError" in failed.stderr, failed
        flaky = server.cli("submit", "otel.flaky", "--queue", "tele-traced", "--max-retries", "1", "--wait")
        assert flaky.stdout == '"ok"\n'
        later = server.cli("submit", "add", "--arg", "1", "--arg", "1", "--queue", "tele-plain", "--countdown", "1h")
        assert server.cli("cancel", later.stdout.strip()).stdout == "cancelled\n"
        server.cli("submit", "add", "--arg", "1", "--arg", "1", "--queue", "tele-plain", "--countdown", "1h")
        submit_expiring(server.addr)
        # A lease whose dispatcher dies: the dev server's scheduler reaps it.
        held = server.cli("submit", "sleep", "--arg", "30", "--queue", "tele-reap").stdout.strip()
        wait_for(lambda: "RUNNING" in server.cli("get", held).stdout, 30, f"task {held} to run")
        dispatcher.process.kill()
        workers[2].kill()
        flood_a_slow_subscriber(server.addr, metrics_url)
        # A store error: the cancelled task's key made a string, not a hash.
        broken = later.stdout.strip()
        assert redis_command(redis_url, "SET", f"{{{prefix}0}}:t:{broken}", "not a task").endswith(b"+OK\r\n")
        assert "WRONGTYPE" in server.cli("get", broken, check=False).stderr
        wanted = ["conveyor_leases_reaped_total", "conveyor_tasks_expired_total"]
        if not unrecorded(http_get(metrics_url)):
            wanted.append("conveyor_store_errors_total")
        for name in wanted:
            wait_for(lambda: sample_sum(http_get(metrics_url), name) > 0, 15, name)
        time.sleep(1.2)  # the gauges' next refresh
        yield Busy(server, metrics_url, http_get(metrics_url), prometheus)
    finally:
        for worker in workers:
            stop_process(worker)
        stop(dispatcher.process, signal.SIGKILL)
        prometheus.stop()
        server.stop()


# --- the dashboard and the metrics table ------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict) -> list[dict]:
    return [panel for panel in board["panels"] if panel["type"] != "row"]


def exprs(board: dict) -> list[str]:
    return [target["expr"] for panel in panels(board) for target in panel["targets"]]


def variable_queries(board: dict) -> dict[str, str]:
    return {variable["name"]: variable["definition"] for variable in board["templating"]["list"]
            if variable["type"] == "query"}


def for_prometheus(expr: str) -> str:
    """A dashboard query as Grafana sends it, every variable at All."""
    return expr.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$queue", ".*")


def test_dashboard_is_a_grafana_dashboard():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41, board["schemaVersion"]
    assert board["uid"] and board["title"] and board["id"] is None
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "queue"):
        assert variables[name]["type"] == "query", variables[name]
        assert variables[name]["query"]["query"] == variables[name]["definition"]
        assert re.fullmatch(rf"label_values\(conveyor_\w+(\{{.*\}})?, {name}\)", variables[name]["definition"])
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(board):
        assert panel["type"] == "timeseries" and panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}" and target["expr"], panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
    titles = " / ".join(panel["title"] for panel in panels(board)).lower()
    for wanted in ("outcomes", "submissions", "latency", "queue wait", "ready tasks", "by state", "workers",
                   "reaped", "dropped", "rpc rate", "rpc latency", "store call latency", "store errors"):
        assert wanted in titles, f"no panel about {wanted}: {titles}"
    # The queries the doc promises.
    text = "\n".join(exprs(board))
    for fragment in ("histogram_quantile(0.5, sum by (le) (rate(conveyor_task_latency_seconds_bucket",
                     "histogram_quantile(0.99, sum by (le) (rate(conveyor_task_latency_seconds_bucket",
                     "histogram_quantile(0.99, sum by (le, namespace, queue) (rate(conveyor_task_queue_wait_seconds_bucket",
                     "max by (namespace, queue) (conveyor_queue_depth", "max by (state) (conveyor_queue_depth",
                     "sum(conveyor_workers_connected)", "sum(conveyor_worker_slots)",
                     "sum by (service, method, code) (rate(conveyor_rpc_requests_total",
                     "histogram_quantile(0.99, sum by (le, service, method) (rate(conveyor_rpc_duration_seconds_bucket"):
        assert fragment in text, fragment


def test_dashboard_names_only_metrics_a_real_server_exposes(busy):
    exposed = series_names(busy.exposition)
    board = dashboard()
    named = set()
    for query in exprs(board) + list(variable_queries(board).values()):
        named |= set(re.findall(r"\bconveyor_[a-z_]+\b", query))
    assert named, "the dashboard queries conveyor metrics"
    base = {name: re.sub(r"_(bucket|sum|count)$", "", name) for name in named}
    missing = {name for name in named - exposed if base[name] not in unrecorded(busy.exposition)}
    assert not missing, f"not in a real scrape: {sorted(missing)}\nscrape has: {sorted(exposed)}"
    # And it shows every metric but the attempts started.
    shown = set(base.values())
    assert shown >= set(families(busy.exposition)) - {"conveyor_tasks_started_total"}, \
        sorted(set(families(busy.exposition)) - shown)


def test_doc_lists_exactly_the_metrics_a_real_server_exposes(busy):
    exposed = families(busy.exposition)
    documented = doc_metric_table()
    assert STORE_METRICS <= set(documented)
    for name in unrecorded(busy.exposition):
        del documented[name]
    assert set(documented) == set(exposed), (
        f"in the doc only: {sorted(set(documented) - set(exposed))}; "
        f"in the scrape only: {sorted(set(exposed) - set(documented))}")
    for name, (kind, labels) in exposed.items():
        assert documented[name] == (kind, labels), f"{name}: the doc says {documented[name]}, the scrape {kind} {sorted(labels)}"
    # The gauge note: ready depths per queue, the rest store-wide.
    depth = re.findall(r"^conveyor_queue_depth\{(.*)\} \S+$", busy.exposition, re.MULTILINE)
    assert 'namespace="default",queue="tele-flood",state="ready"' in depth, depth
    assert {'state="scheduled"', 'state="leased"', 'state="dead"'} <= set(depth), depth
    assert sample_sum(busy.exposition, "conveyor_queue_depth", state="scheduled") >= 1
    assert sample_sum(busy.exposition, "conveyor_queue_depth", state="dead") >= 1


def test_a_busy_exposition_passes_promtool(busy):
    checked = subprocess.run([tool("promtool"), "check", "metrics"], input=busy.exposition, capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_doc_scrape_config_is_valid(tmp_path):
    path = tmp_path / "prometheus.yml"
    path.write_text(doc_scrape_config())
    checked = subprocess.run([tool("promtool"), "check", "config", str(path)], capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f'"{DOC_METRICS}"' in path.read_text(), "the scrape config targets dev's default address"


def test_every_dashboard_query_returns_data_in_prometheus(busy):
    board = dashboard()
    for expr in exprs(board):
        if any(name in expr for name in unrecorded(busy.exposition)):
            continue
        query = for_prometheus(expr)
        result = busy.prometheus.wait(query, lambda: busy.prometheus.api("query", query=query)["result"])
        assert result, query
    for name, definition in variable_queries(board).items():
        metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)", definition).groups()
        selector = for_prometheus(metric)
        values = busy.prometheus.wait(definition, lambda: busy.prometheus.api(
            f"label/{label}/values", **{"match[]": selector}))
        wanted = "default" if name == "namespace" else "tele-plain"
        assert wanted in values, (definition, values)


def test_doc_promql_returns_data_in_prometheus(busy):
    queries = [line for line in fenced_after("**Aggregating over processes.**", "promql") if line.strip()]
    assert len(queries) >= 3, queries
    for query in queries:
        assert busy.prometheus.wait(query, lambda: busy.prometheus.api("query", query=query)["result"]), query


def test_doc_event_kinds_are_the_protos_and_the_clis():
    proto = (ROOT / "proto/conveyor/v1/results_service.proto").read_text()
    enum = proto[proto.index("enum EventKind {"):]
    kinds = re.findall(r"^  (EVENT_KIND_\w+) = \d+;", enum[:enum.index("}")], re.MULTILINE)
    kinds.remove("EVENT_KIND_UNSPECIFIED")
    rows = re.findall(r"^\| `(EVENT_KIND_\w+)` \| `([a-z-]+)` \|", DOC.read_text(), re.MULTILINE)
    assert [kind for kind, _ in rows] == kinds
    usage = subprocess.run([str(_conveyor_bin()), "events", "--help"], capture_output=True, text=True,
                           timeout=30).stdout
    listed = re.search(r"Only these kinds: ([a-z, -]+) \(comma-separated\)", usage).group(1).split(", ")
    assert [name for _, name in rows] == listed, usage


# --- the health probe while draining ----------------------------------------------------------


def test_healthz_answers_draining_while_the_server_drains():
    port = free_port()
    server = Server("--metrics-listen", f"127.0.0.1:{port}", "--grace", "2s", env=clean_env(RUST_LOG="warn"))
    worker = start_worker({"worker": {"rust": [example("worker")]}}, "rust", server, "tele-drain", "tele-drain")
    try:
        server.wait_for_worker("tele-drain")
        held = server.cli("submit", "sleep", "--arg", "30", "--queue", "tele-drain").stdout.strip()
        wait_for(lambda: "RUNNING" in server.cli("get", held).stdout, 30, f"task {held} to run")

        def probe():
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                connection.request("GET", "/healthz")
                answer = connection.getresponse()
                return answer.status, answer.read()
            finally:
                connection.close()

        assert probe() == (200, b"ok\n")
        server.process.send_signal(signal.SIGTERM)
        # New connections, as a Kubernetes probe makes, read 503 while the
        # server drains (the running task holds the drain open).
        assert wait_for(lambda: (lambda answer: answer if answer[0] != 200 else None)(probe()), 5,
                        "/healthz to say draining") == (503, b"draining\n")
    finally:
        stop_process(worker)
        server.stop()


# --- the doc's commands -----------------------------------------------------------------------


def line_regex(expected: str) -> tuple[re.Pattern, list[str]]:
    """A pattern for one shown line, and the doc ids it holds in group order."""
    parts = re.split(rf"({UUID}|…|\b\d{{10}}\.\d+\b|\d{{4}}-\d\d-\d\dT[0-9:.]+Z)", expected.strip())
    regex, ids = "", []
    for index, part in enumerate(parts):
        if index % 2 == 0:
            regex += re.escape(part)
        elif re.fullmatch(UUID, part):
            regex += f"({UUID})"
            ids.append(part)
        elif part == "…":
            regex += ".*?"
        elif "T" in part:
            regex += r"\d{4}-\d\d-\d\dT[0-9:.]+Z"
        else:
            regex += r"\d{10}\.\d+"
    return re.compile(regex + r"\Z"), ids


class Ids:
    """Doc ids and the real ids they stand for, the same throughout."""

    def __init__(self) -> None:
        self.known: dict[str, str] = {}

    def match_line(self, expected: str, actual: str, pending: dict[str, str]) -> bool:
        pattern, ids = line_regex(expected)
        found = pattern.match(actual.strip())
        if not found:
            return False
        for doc_id, real in zip(ids, found.groups()):
            if self.known.get(doc_id, pending.get(doc_id, real)) != real:
                return False
            pending[doc_id] = real
        return True

    def match_lines(self, expected: list[str], actual: list[str]) -> bool:
        pending: dict[str, str] = {}
        if len(expected) != len(actual) or not all(
                self.match_line(want, got, pending) for want, got in zip(expected, actual)):
            return False
        self.known.update(pending)
        return True

    def match_subsequence(self, expected: list[str], actual: list[str]) -> bool:
        pending: dict[str, str] = {}
        index = 0
        for line in actual:
            if index < len(expected) and self.match_line(expected[index], line, pending):
                index += 1
        if index < len(expected):
            return False
        self.known.update(pending)
        return True

    def match_events(self, expected: list[dict], actual: list[dict]) -> bool:
        """grpcurl's events: the same fields, times and ids as wildcards."""
        pending: dict[str, str] = {}
        if len(expected) != len(actual):
            return False
        for want, got in zip(expected, actual):
            if set(want) != set(got):
                return False
            for key, value in want.items():
                if key == "time":
                    if not re.fullmatch(r"\d{4}-\d\d-\d\dT[0-9:.]+Z", got[key]):
                        return False
                elif key == "sessionId":
                    continue
                elif key == "taskId":
                    if not self.match_line(value, got[key], pending):
                        return False
                elif got[key] != value:
                    return False
        self.known.update(pending)
        return True


def json_messages(text: str) -> list[dict]:
    decoder, messages, index = json.JSONDecoder(), [], 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return messages
        message, index = decoder.raw_decode(text, index)
        messages.append(message)


def events_of(messages: list[dict]) -> list[dict]:
    """The events of grpcurl's messages, message boundaries and worker
    heartbeats (which come every 5 s) left out."""
    return [event for message in messages for event in message.get("events", [])
            if event["kind"] != "EVENT_KIND_WORKER_HEARTBEAT"]


def without_heartbeats(lines: list[str], expected: list[str]) -> list[str]:
    if any(" worker-heartbeat " in line for line in expected):
        return lines
    return [line for line in lines if " worker-heartbeat " not in line]


@dataclasses.dataclass
class Listener:
    command: Command
    process: subprocess.Popen
    output: Output


class Walk:
    """Runs the doc's commands in order, as a reader with a few terminals would."""

    def __init__(self, sink: SpanSink, tmp: pathlib.Path) -> None:
        self.sink = sink
        self.ids = Ids()
        self.bin = tmp / "bin"
        self.bin.mkdir()
        (self.bin / "conveyor").symlink_to(_conveyor_bin())
        (self.bin / "grpcurl").symlink_to(grpcurl())
        self.server: subprocess.Popen | None = None
        self.server_output: Output | None = None
        self.addr = ""
        self.metrics = ""
        self.workers: list[subprocess.Popen] = []
        self.listeners: list[Listener] = []

    # Addresses and environment.

    def substitute(self, text: str) -> str:
        for doc in DOC_GRPC:
            text = text.replace(doc, self.addr)
        return text.replace(DOC_METRICS, self.metrics).replace(DOC_OTLP, self.sink.endpoint)

    def env(self, **extra: str) -> dict:
        return clean_env(PATH=f"{self.bin}:{os.environ['PATH']}", LC_ALL="C", CONVEYOR_ADDR=f"http://{self.addr}",
                         OTEL_BSP_SCHEDULE_DELAY="100", **extra)

    def split(self, command: Command) -> tuple[dict, list[str]]:
        """Leading NAME=value words, and the rest as argv."""
        words = shlex.split(self.substitute(command.text))
        env = {}
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            name, value = words.pop(0).split("=", 1)
            env[name] = value
        if words[:3] == ["cargo", "run", "--example"]:
            words = [example(words[3]), *words[4:]]
        elif words[0] in ("conveyor", "grpcurl"):
            words[0] = str(self.bin / words[0])
        return env, words

    # The kinds of command.

    def run(self, command: Command) -> None:
        words = command.text.split()
        if words[:2] == ["conveyor", "dev"]:
            self.start_server(command)
        elif "cargo" in words and "--example" in words:
            self.start_worker(command)
        elif words[:2] == ["conveyor", "events"] or (words[0] == "grpcurl" and command.text.endswith("/WatchEvents")):
            self.start_listener(command)
        else:
            self.run_foreground(command)

    def start_server(self, command: Command) -> None:
        self.stop_all()
        self.addr = "127.0.0.1:50051"  # until the server says where it listens
        self.metrics = f"127.0.0.1:{free_port()}"
        env, argv = self.split(command)
        assert "--listen" not in argv, "the doc's dev servers listen where dev does"
        argv += ["--listen", "127.0.0.1:0"]
        if "--metrics-listen" not in argv:
            argv += ["--metrics-listen", self.metrics]
        self.server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env=self.env(**env))
        self.server_output = Output(self.server)
        first = self.server_output.wait_for(lambda: self.server_output.stdout, 15, f"{command.text} to listen")[0]
        assert first.startswith("listening on "), first
        self.addr = first.removeprefix("listening on ")
        expected = [self.substitute(line) for line in command.expected]
        assert self.ids.match_line(expected[0], first, {}), (command.text, expected[0], first)
        self.server_output.wait_for(
            lambda: self.ids.match_subsequence(expected[1:], [log_line(line) for line in self.server_output.stderr]),
            15, f"the log lines the doc shows for {command.text}: {expected[1:]}")

    def start_worker(self, command: Command) -> None:
        env, argv = self.split(command)
        # The examples' default collector is the doc's.
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": self.sink.endpoint, **env}
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=self.env(**env), cwd=ROOT)
        self.workers.append(process)
        output = Output(process)
        expected = [self.substitute(line) for line in command.expected]
        # The example worker logs to stdout, the traced one to stderr.
        output.wait_for(lambda: any(self.ids.match_subsequence(expected, [log_line(line) for line in lines])
                                    for lines in (output.stdout, output.stderr)),
                        30, f"the lines the doc shows for {command.text}: {expected}")

    def watch_events_calls(self) -> float:
        return sample_sum(http_get(f"http://{self.metrics}/metrics"), "conveyor_rpc_requests_total",
                          method="WatchEvents")

    def start_listener(self, command: Command) -> None:
        before = self.watch_events_calls()
        env, argv = self.split(command)
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=self.env(**env))
        self.listeners.append(Listener(command, process, Output(process)))
        # Subscribed once the server has answered the call: nothing after is missed.
        wait_for(lambda: self.watch_events_calls() > before, 15, f"{command.text} to subscribe")

    def collect_listeners(self, block: int) -> None:
        """Checks the listeners started before block (the block after theirs has run)."""
        for listener in [listener for listener in self.listeners if listener.command.block < block]:
            self.listeners.remove(listener)
            expected = [self.substitute(line) for line in listener.command.expected]
            output = listener.output
            if listener.command.text.startswith("grpcurl"):
                wanted = events_of(json_messages("\n".join(expected)))

                def arrived():
                    try:
                        return len(events_of(json_messages("\n".join(output.stdout)))) >= len(wanted)
                    except json.JSONDecodeError:  # a message half printed
                        return False

                output.wait_for(arrived, 10, f"the events of {listener.command.text}")
                stop(listener.process, signal.SIGINT)
                output.join()
                got = events_of(json_messages("\n".join(output.stdout)))
                assert self.ids.match_events(wanted, got), (
                    f"{listener.command.text} printed\n" + json.dumps(got, indent=2) + "\nthe doc shows\n"
                    + json.dumps(wanted, indent=2))
            else:
                output.wait_for(lambda: listener.process.poll() is not None, 10,
                                f"{listener.command.text} to exit after its --count")
                output.join()
                assert listener.process.returncode == 0, output.stderr
                got = without_heartbeats(output.stdout, expected)
                assert self.ids.match_lines(expected, got), (
                    f"{listener.command.text} printed\n" + "\n".join(output.stdout) + "\nthe doc shows\n"
                    + "\n".join(expected))

    def run_foreground(self, command: Command) -> None:
        """Runs the command in bash; commands that only read (curl) are
        repeated until their output matches (the gauges refresh each second)."""
        expected = [self.substitute(line) for line in command.expected]
        deadline = time.monotonic() + (5 if command.text.startswith("curl ") else 0)
        while True:
            done = subprocess.run(["bash", "-c", "set -o pipefail; " + self.substitute(command.text)],
                                  capture_output=True, text=True, env=self.env(), timeout=60)
            lines = done.stdout.splitlines() + [log_line(line) for line in done.stderr.splitlines()]
            if done.returncode == 0 and self.ids.match_lines(expected, lines):
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"$ {command.text}\nexited {done.returncode} and printed\n"
                                     + "\n".join(lines) + "\nthe doc shows\n" + "\n".join(expected))
            time.sleep(0.2)

    def stop_all(self) -> None:
        for listener in self.listeners:
            stop(listener.process)
        self.listeners.clear()
        for worker in self.workers:
            stop(worker)
        self.workers.clear()
        stop(self.server)
        self.server = None


def render_tree(spans: list[Span], root: Span) -> list[str]:
    """The spans under root as the doc draws them: name, kind, service, and
    attempt, outcome and an error status when the span has them."""
    children = collections.defaultdict(list)
    for span in spans:
        children[span.parent_span_id].append(span)

    def label(span: Span) -> str:
        extras = []
        if "conveyor.task.attempt" in span.attributes:
            extras.append(f"attempt={span.attributes['conveyor.task.attempt']}")
        if "conveyor.task.outcome" in span.attributes:
            extras.append(f"outcome={span.attributes['conveyor.task.outcome']}")
        if span.status == "ERROR":
            extras.append("status=ERROR")
        return " ".join([span.name, span.kind, span.service, *extras])

    lines = [label(root)]

    def walk(span: Span, prefix: str) -> None:
        below = children[span.span_id]
        by_attempt = all("conveyor.task.attempt" in child.attributes for child in below)
        below = sorted(below, key=lambda child: (child.attributes["conveyor.task.attempt"] if by_attempt else 0,
                                                 child.name))
        for index, child in enumerate(below):
            last = index == len(below) - 1
            lines.append(prefix + ("└── " if last else "├── ") + label(child))
            walk(child, prefix + ("    " if last else "│   "))

    walk(root, "")
    return [" ".join(line.split()) for line in lines]


def check_doc_trace(sink: SpanSink) -> None:
    expected = [" ".join(line.split()) for line in fenced_after("the trace of the submit above", "text")]

    def rendered(spans: list[Span]):
        delivers = [span for span in spans if span.name == "deliver otel"
                    and span.attributes.get("conveyor.task.name") == "otel.flaky"]
        if not delivers:
            return None
        trace = [span for span in spans if span.trace_id == delivers[0].trace_id]
        roots = [span for span in trace if span.parent_span_id == ""]
        if len(roots) != 1:
            return None
        lines = render_tree(trace, roots[0])
        return lines if lines == expected else None

    try:
        sink.wait_for(rendered, timeout=10, what="the doc's trace")
    except AssertionError:
        spans = sink.spans()
        delivers = [span for span in spans if span.name == "deliver otel"]
        trace = [span for span in spans if delivers and span.trace_id == delivers[0].trace_id]
        roots = [span for span in trace if span.parent_span_id == ""]
        got = render_tree(trace, roots[0]) if len(roots) == 1 else [str(span) for span in trace]
        raise AssertionError("the trace the receiver got:\n" + "\n".join(got) + "\nthe doc draws:\n"
                             + "\n".join(expected)) from None


def test_doc_commands(sink, tmp_path):
    blocks = console_blocks()
    commands = [command for block in blocks for command in block]
    assert len(commands) >= 15, [command.text for command in commands]
    walk = Walk(sink, tmp_path)
    try:
        for index, block in enumerate(blocks):
            for command in block:
                walk.run(command)
            walk.collect_listeners(index)
        walk.collect_listeners(len(blocks))
    finally:
        walk.stop_all()
    check_doc_trace(sink)
    kinds = {command.text.split()[0] for command in commands}
    assert {"conveyor", "curl", "grpcurl"} <= kinds, kinds
