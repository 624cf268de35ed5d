"""docs/security.md, checked against real processes.

The doc's commands: every `$ …` line of its console blocks runs, in order,
with a temporary directory in place of /tmp/certs and the test server's ports
in place of 50051 and 9464, from the repository's root with this machine's `conveyor`
first on the PATH; its output (stdout, then stderr without log timestamps) is
compared with the lines shown under it (`…` for text left out). `conveyor
dev` starts, in the background, the server the commands after it talk to;
the log lines shown under it must appear in its log, in that order.

And the doc's claims that are cheap to check: an mTLS server refuses the CLI
without a client certificate (and logs the refused handshake with the peer's
address) and accepts it with CONVEYOR_TLS_CERT/CONVEYOR_TLS_KEY; a
certificate without its key is refused by the CLI; the plaintext admin
listener answers /healthz next to a TLS listener; bad files stop the server
at start with the flag to fix; a certificate replaced on disk is served to
new connections without a restart; the flags table is `conveyor dev --help`'s.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest

from conftest import ROOT, _conveyor_bin, stop_process

DOC = ROOT / "docs/security.md"
GEN_CERTS = ROOT / "scripts/gen-test-certs"
DOC_CERTS = "/tmp/certs"
DOC_PORT = ":50051"
DOC_METRICS = "127.0.0.1:9464"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --- helpers ----------------------------------------------------------------------------------


def free_port() -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in (9464, 50051):  # dev's defaults: a developer's own server may want them
            return port


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def clean_env(**extra: str) -> dict:
    """This process's environment without the settings that would change what
    the commands do (TLS, addresses, log levels, tracing), plus extra."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CONVEYOR_", "OTEL_")) and key != "RUST_LOG"}
    env.update(LC_ALL="C", **extra)
    return env


def log_line(line: str) -> str:
    """A log line as the doc shows it: no colours, no timestamp."""
    line = ANSI.sub("", line).rstrip("\n")
    return re.sub(r"^\d{4}-\d\d-\d\dT[0-9:.]+Z", "", line).strip()


def same(expected: str, actual: str) -> bool:
    """One shown line against one printed line: runs of spaces are one space,
    `…` stands for anything."""
    parts = " ".join(expected.split()).split("…")
    return re.fullmatch(".*?".join(re.escape(part) for part in parts), " ".join(actual.split())) is not None


def subsequence(expected: list[str], actual: list[str]) -> bool:
    index = 0
    for line in actual:
        if index < len(expected) and same(expected[index], line):
            index += 1
    return index == len(expected)


class Dev:
    """`conveyor dev` with TLS flags, on a free port, its admin listener off
    unless asked for, its log in a file (read while it runs)."""

    def __init__(self, log: pathlib.Path, *args: str) -> None:
        self.log = log
        argv = [str(_conveyor_bin()), "dev", "--listen", "127.0.0.1:0", *args]
        if "--metrics-listen" not in args:
            argv += ["--metrics-listen", "off"]
        with open(log, "w") as stderr:
            self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                            env=clean_env())
        first = self.process.stdout.readline().strip()
        if not first.startswith("listening on "):
            stop_process(self.process)
            raise AssertionError(f"unexpected first line {first!r}; log:\n{self.log_text()}")
        self.addr = first.removeprefix("listening on ")
        self.port = int(self.addr.rsplit(":", 1)[1])

    def log_text(self) -> str:
        return ANSI.sub("", self.log.read_text())

    def workers(self, **env: str) -> subprocess.CompletedProcess:
        """`conveyor workers` at https://localhost:PORT with env added."""
        return subprocess.run([str(_conveyor_bin()), "workers", "--server", f"https://localhost:{self.port}"],
                              capture_output=True, text=True, timeout=30, env=clean_env(**env))

    def stop(self) -> None:
        stop_process(self.process)


# --- the doc ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Command:
    text: str
    expected: list[str]


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
            blocks[-1].append(Command(text.rstrip("\\").strip(), []))
        else:
            assert blocks[-1], f"output before any command in a console block: {line!r}"
            blocks[-1][-1].expected.append(line)
    return blocks


def flag_table() -> list[tuple[str, str]]:
    """(flag, env) of each row of the doc's table of listener flags."""
    rows = []
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`--"):
            flag = re.fullmatch(r"`(--[a-z-]+)(?: [A-Z]+)?`", cells[0])
            env = re.fullmatch(r"`(CONVEYOR_[A-Z_]+)`", cells[1])
            assert flag and env, f"a row of the flags table: {line!r}"
            rows.append((flag.group(1), env.group(1)))
    return rows


class Walk:
    """Runs the doc's commands in order, as a reader with two terminals would."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.certs = tmp / "certs"
        self.bin = tmp / "bin"
        self.bin.mkdir()
        (self.bin / "conveyor").symlink_to(_conveyor_bin())
        self.log = tmp / "dev.log"
        self.server: subprocess.Popen | None = None
        self.port = 0
        self.metrics = f"127.0.0.1:{free_port()}"

    def substitute(self, text: str) -> str:
        text = text.replace(DOC_CERTS, str(self.certs)).replace(DOC_METRICS, self.metrics)
        return text.replace(DOC_PORT, f":{self.port}") if self.port else text

    def env(self, **extra: str) -> dict:
        # The CLI's default address is dev's (127.0.0.1:50051): here, the
        # test server's port.
        if self.port:
            extra.setdefault("CONVEYOR_ADDR", f"http://127.0.0.1:{self.port}")
        return clean_env(PATH=f"{self.bin}:{os.environ['PATH']}", **extra)

    def run(self, command: Command) -> None:
        if command.text.split()[:2] == ["conveyor", "dev"]:
            self.start_server(command)
        else:
            self.run_foreground(command)

    def start_server(self, command: Command) -> None:
        self.stop()
        words = shlex.split(self.substitute(command.text))
        assert "--listen" not in words and "--metrics-listen" not in words, "the doc's server listens where dev does"
        argv = [str(self.bin / "conveyor"), *words[1:], "--listen", "127.0.0.1:0", "--metrics-listen", self.metrics]
        with open(self.log, "w") as stderr:
            self.server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=self.env(),
                                           cwd=ROOT)
        first = self.server.stdout.readline().strip()
        assert first.startswith("listening on "), f"$ {command.text}\nprinted {first!r}; log:\n{self.log.read_text()}"
        self.port = int(first.rsplit(":", 1)[1])
        expected = [self.substitute(line) for line in command.expected]
        assert expected and same(expected[0], first), (command.text, expected[:1], first)

        def logged():
            lines = [log_line(line) for line in self.log.read_text().splitlines()]
            return subsequence(expected[1:], lines)

        try:
            wait_for(logged, 15, "the log lines the doc shows")
        except AssertionError:
            raise AssertionError(f"$ {command.text}\nlogged\n{self.log.read_text()}\nthe doc shows\n"
                                 + "\n".join(expected[1:])) from None

    def run_foreground(self, command: Command) -> None:
        expected = [self.substitute(line) for line in command.expected]
        done = subprocess.run(["bash", "-c", "set -o pipefail; " + self.substitute(command.text)],
                              capture_output=True, text=True, env=self.env(), cwd=ROOT, timeout=60)
        lines = done.stdout.splitlines() + [log_line(line) for line in done.stderr.splitlines()]
        assert done.returncode == 0 and len(lines) == len(expected) and all(map(same, expected, lines)), (
            f"$ {command.text}\nexited {done.returncode} and printed\n" + "\n".join(lines)
            + "\nthe doc shows\n" + "\n".join(expected))

    def stop(self) -> None:
        if self.server is not None:
            stop_process(self.server)
            self.server = None


def test_doc_commands(tmp_path):
    text = DOC.read_text()
    others = re.findall(r"^```(sh|bash|shell)\s*$", text, re.MULTILINE)
    assert not others, f"commands outside console blocks escape this test: ```{others[0]}"
    commands = [command for block in console_blocks() for command in block]
    programs = [" ".join(command.text.split()[:2]) for command in commands]
    assert programs == ["scripts/gen-test-certs /tmp/certs", "conveyor dev",
                        "CONVEYOR_TLS_CA=/tmp/certs/ca.pem conveyor", "conveyor auth", "conveyor auth",
                        "conveyor dev", "conveyor submit", "conveyor workers", "conveyor submit",
                        "conveyor submit"], programs
    walk = Walk(tmp_path)
    try:
        for command in commands:
            walk.run(command)
        assert walk.server is not None and walk.server.poll() is None, "the doc's server is still serving"
    finally:
        walk.stop()


# --- the doc's claims -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("certs")
    subprocess.run([str(GEN_CERTS), str(directory)], check=True, capture_output=True, timeout=60)
    return directory


def test_mtls_needs_a_client_certificate(certs, tmp_path):
    metrics = free_port()
    dev = Dev(tmp_path / "dev.log", "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
              "--tls-client-ca", str(certs / "ca.pem"), "--metrics-listen", f"127.0.0.1:{metrics}")
    try:
        ca = str(certs / "ca.pem")
        refused = dev.workers(CONVEYOR_TLS_CA=ca)
        assert refused.returncode != 0 and "WORKER" not in refused.stdout, refused
        # Refused handshakes are logged at INFO with the peer's address.
        wait_for(lambda: re.search(r"INFO .*handshake refused.* peer=127\.0\.0\.1:\d+", dev.log_text()), 10,
                 "the refused handshake in the log:\n" + dev.log_text())

        accepted = dev.workers(CONVEYOR_TLS_CA=ca, CONVEYOR_TLS_CERT=str(certs / "client.pem"),
                               CONVEYOR_TLS_KEY=str(certs / "client.key"))
        assert accepted.returncode == 0 and "(no workers connected)" in accepted.stdout, accepted

        # Set both or neither.
        half = dev.workers(CONVEYOR_TLS_CA=ca, CONVEYOR_TLS_CERT=str(certs / "client.pem"))
        assert half.returncode != 0 and "CONVEYOR_TLS_KEY" in half.stderr, half

        # The plaintext admin listener answers the probe next to the mTLS listener.
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/healthz", timeout=5) as answer:
            assert (answer.status, answer.read()) == (200, b"ok\n")
        assert dev.process.poll() is None
    finally:
        dev.stop()


def bad_start(log: pathlib.Path, *args: str) -> str:
    """Starts dev with args, which must stop it at start; returns its error."""
    argv = [str(_conveyor_bin()), "dev", "--listen", "127.0.0.1:0", "--metrics-listen", "off", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=15, env=clean_env())
    except subprocess.TimeoutExpired as expired:
        raise AssertionError(f"conveyor dev {' '.join(args)} kept running: {expired.stdout!r}") from None
    assert done.returncode != 0 and "listening on" not in done.stdout, done
    return ANSI.sub("", done.stderr)


def test_bad_files_stop_the_server_at_start(certs, tmp_path):
    cert, key = str(certs / "server.pem"), str(certs / "server.key")
    missing = str(tmp_path / "missing.pem")
    log = tmp_path / "dev.log"
    assert f"--tls-cert {missing}" in bad_start(log, "--tls-cert", missing, "--tls-key", key)
    assert f"--tls-key {missing}" in bad_start(log, "--tls-cert", cert, "--tls-key", missing)
    # No certificate in the file.
    assert f"--tls-cert {key}" in bad_start(log, "--tls-cert", key, "--tls-key", key)
    # No key in the file.
    assert f"--tls-key {cert}" in bad_start(log, "--tls-cert", cert, "--tls-key", cert)
    # A key that is not the certificate's.
    other = str(certs / "client.key")
    error = bad_start(log, "--tls-cert", cert, "--tls-key", other)
    assert f"--tls-cert {cert} and --tls-key {other} do not belong together" in error, error
    assert f"--tls-client-ca {missing}" in bad_start(log, "--tls-cert", cert, "--tls-key", key,
                                                     "--tls-client-ca", missing)


def served_certificate(port: int) -> bytes:
    """The DER certificate a new TLS connection to the port is given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "h2"
            return tls.getpeercert(binary_form=True)


def pem_der(path: pathlib.Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_a_certificate_replaced_on_disk_is_served_without_a_restart(certs, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    for name in ("server.pem", "server.key"):
        shutil.copy(certs / name, live / name)
    dev = Dev(tmp_path / "dev.log", "--tls-cert", str(live / "server.pem"), "--tls-key", str(live / "server.key"))
    try:
        assert served_certificate(dev.port) == pem_der(certs / "server.pem")
        fresh = tmp_path / "fresh"
        subprocess.run([str(GEN_CERTS), str(fresh)], check=True, capture_output=True, timeout=60)
        assert pem_der(fresh / "server.pem") != pem_der(certs / "server.pem")
        # The key first, then the certificate, as the doc says.
        shutil.copy(fresh / "server.key", live / "server.key.new")
        os.replace(live / "server.key.new", live / "server.key")
        shutil.copy(fresh / "server.pem", live / "server.pem.new")
        os.replace(live / "server.pem.new", live / "server.pem")
        wanted = pem_der(fresh / "server.pem")
        # Checked every 2 s: within a few checks.
        wait_for(lambda: served_certificate(dev.port) == wanted, 10, "the new certificate to be served")
        assert dev.process.poll() is None
    finally:
        dev.stop()


def help_entries(command: list[str]) -> dict[str, str]:
    """--flag -> its entry (the text up to the next flag) in the command's --help."""
    usage = subprocess.run([str(_conveyor_bin()), *command, "--help"], capture_output=True, text=True, timeout=30,
                           env=clean_env(), check=True).stdout
    options = usage[usage.index("Options:"):]
    entries = {}
    for chunk in re.split(r"\n(?=\s*(?:-\w, )?--[a-z])", options)[1:]:
        flag = re.match(r"\s*(?:-\w, )?(--[a-z-]+)", chunk).group(1)
        entries[flag] = " ".join(chunk.split())
    return entries


def test_flags_table_matches_dev_help():
    rows = flag_table()
    assert len(rows) >= 4, rows
    entries = help_entries(["dev"])
    for flag, env in rows:
        assert flag in entries, f"{flag} is not an option of conveyor dev: {sorted(entries)}"
        assert f"[env: {env}=]" in entries[flag], f"{flag}: the doc says {env}, the help says {entries[flag]!r}"
    tls = {flag for flag in entries if flag.startswith(("--tls-", "--redis-tls-"))}
    assert tls == {flag for flag, _ in rows}, f"TLS options of conveyor dev the tables leave out: {tls}"
