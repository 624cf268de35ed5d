"""Runs exactly the grpcurl commands of the README's quick start (with the
test server's address and the submitted task's id) and checks their output."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest

from conftest import ROOT, start_worker, stop_process


def readme_grpcurl_commands() -> list[str]:
    """`$ grpcurl …` commands from the README's console blocks, joined across
    backslash continuations."""
    commands, current = [], None
    for line in (ROOT / "README.md").read_text().splitlines():
        if current is not None:
            current += " " + line.strip().rstrip("\\").strip()
            if not line.rstrip().endswith("\\"):
                commands.append(current)
                current = None
        elif line.startswith("$ grpcurl "):
            text = line[2:]
            if text.rstrip().endswith("\\"):
                current = text.rstrip().rstrip("\\").strip()
            else:
                commands.append(text.strip())
    return commands


def grpcurl() -> str:
    found = shutil.which("grpcurl") or str(pathlib.Path(os.path.expanduser("~/go/bin/grpcurl")))
    assert pathlib.Path(found).exists(), "grpcurl is missing: scripts/test installs it with go install"
    return found


@pytest.fixture(scope="module")
def worker(programs, server):
    process = start_worker(programs, "rust", server, "default", "readme-worker")
    server.wait_for_worker("readme-worker")
    yield process
    stop_process(process)


def test_readme_grpcurl_commands(server, worker):
    commands = readme_grpcurl_commands()
    kinds = [next(word for word in shlex.split(command) if "/" in word or word in ("list", "describe"))
             for command in commands]
    assert len(commands) >= 6, commands
    task_id = None
    described_message = False
    for command, kind in zip(commands, kinds):
        command = command.replace("localhost:50051", server.addr)
        if task_id is not None:
            command = re.sub(r'"taskId":"[0-9a-f-]+"', f'"taskId":"{task_id}"', command)
        argv = shlex.split(command)
        argv[0] = grpcurl()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        output = done.stdout + done.stderr
        if kind == "list":
            assert done.returncode == 0, output
            for service in ["conveyor.v1.DispatchService", "conveyor.v1.ResultsService",
                            "conveyor.v1.SchedulingService", "conveyor.v1.SubmissionService",
                            "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]:
                assert service in done.stdout.split(), output
        elif kind == "describe" and "is a message" in output:
            assert done.returncode == 0, output
            assert "message SubmitTaskRequest {" in output and "TaskSpec task = 1" in output, output
            described_message = True
        elif kind == "describe":
            assert done.returncode == 0, output
            assert "service SubmissionService {" in output and "rpc SubmitTask" in output, output
        elif kind.endswith("SubmitTask") and '"priority":12' in command:
            assert done.returncode != 0
            assert "Code: InvalidArgument" in output and '"field": "task.options.priority"' in output, output
        elif kind.endswith("SubmitTask"):
            assert done.returncode == 0, output
            task_id = re.search(r'"taskId": "([0-9a-f-]+)"', output).group(1)
            assert "TASK_STATE_QUEUED" in output
        elif kind.endswith("WaitTask"):
            assert done.returncode == 0, output
            assert "TASK_STATE_SUCCEEDED" in output and '"data": "NA=="' in output, output
        elif kind.endswith("Health/Check"):
            assert done.returncode == 0 and '"status": "SERVING"' in output, output
        else:
            raise AssertionError(f"the README shows a grpcurl command this test does not know: {command}")
    assert task_id is not None, "the README shows a submit"
    assert described_message, "the README describes a message"
