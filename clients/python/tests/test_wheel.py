"""The package builds as a wheel that carries the hand-written and the
generated modules and the pinned dependencies."""

import importlib.util
import subprocess
import sys
import zipfile

from conftest import CLIENT_DIR


def test_wheel_builds(tmp_path):
    command = [sys.executable, "-m", "pip", "wheel", str(CLIENT_DIR), "-w", str(tmp_path), "--no-deps", "-q"]
    if importlib.util.find_spec("hatchling") is not None:
        command.append("--no-build-isolation")  # the `test` extra installs the backend
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list(tmp_path.glob("conveyor_client-*.whl"))
    assert len(wheels) == 1, list(tmp_path.iterdir())
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
        for module in (
            "conveyor/__init__.py",
            "conveyor/aio.py",
            "conveyor/worker.py",
            "conveyor/cli.py",
            "conveyor/__main__.py",
            "conveyor/_process.py",
            "conveyor/_tracing.py",
            "conveyor/schedules.py",
            "conveyor/py.typed",
            "conveyor/v1/task_pb2.py",
            "conveyor/v1/dispatch_service_pb2_grpc.py",
        ):
            assert module in names, module
        assert not any("__pycache__" in name for name in names)
        metadata = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "[console_scripts]" in entry_points
    assert "conveyor-worker = conveyor.cli:main" in entry_points
    # What PyPI shows: a summary, the README as description, license, classifiers.
    assert "Summary: Python client and worker SDK for Conveyor" in metadata
    assert "Description-Content-Type: text/markdown" in metadata
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: Programming Language :: Python :: 3.12" in metadata
    assert "## Migrating from Celery" in metadata
    assert "Name: conveyor-client" in metadata
    assert "Requires-Python: >=3.10" in metadata
    assert "Requires-Dist: grpcio<2,>=1.85.1" in metadata
    assert "Requires-Dist: protobuf<8,>=7.35.1" in metadata
    # Tracing: the OpenTelemetry API only; the SDK is the test extra's.
    assert "Requires-Dist: opentelemetry-api<2,>=1.22" in metadata
    assert "Requires-Dist: opentelemetry-sdk==1.45.2; extra == 'test'" in metadata
    assert not any(line.startswith("Requires-Dist: opentelemetry-sdk") and "extra" not in line for line in metadata.splitlines())
