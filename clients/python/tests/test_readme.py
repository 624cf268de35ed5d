"""The README's Workflows examples, run as written against a real server
and a worker in this process: the first block (the tasks) is defined on an
app of this test, the others run in order in one namespace, and a line
ending with `# == value` asserts that its expression equals `value`."""

import re
from pathlib import Path

import pytest

import conveyor
from conveyor import app as app_module

README = Path(__file__).resolve().parent.parent / "README.md"
EXPECT = re.compile(r"^(?P<expr>\S.*?)\s+#\s*== (?P<value>.+?)(?::\s.*)?$")
# The address the README's examples use.
README_ADDRESS = "http://127.0.0.1:50051"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def runnable(block: str, address: str) -> str:
    """The block with `expr  # == value` lines turned into assertions."""
    lines = []
    for line in block.replace(README_ADDRESS, address).splitlines():
        match = EXPECT.match(line)
        if match:
            expr, value = match["expr"], match["value"]
            line = f"__got = ({expr})\nassert __got == ({value}), repr(__got) + ' != ' + {value!r} + ' from ' + {expr!r}"
        lines.append(line)
    return "\n".join(lines)


def test_the_examples_are_there():
    blocks = python_blocks(section("Workflows"))
    assert len(blocks) >= 6 and "# tasks.py" in blocks[0]
    checked = sum(1 for block in blocks for line in block.splitlines() if EXPECT.match(line))
    assert checked >= 25, f"only {checked} checked lines"


def test_workflows_section_runs_as_written(server, start_worker, queue_name):
    blocks = python_blocks(section("Workflows"))
    previous = app_module._default_app
    try:
        with conveyor.Conveyor(server) as app:
            app.conf.task_default_queue = queue_name
            namespace = {"app": app, "conveyor": conveyor}
            exec(compile(blocks[0], "README.md[tasks]", "exec"), namespace)  # noqa: S102 - the README's own code
            start_worker(app, [queue_name, "default"], concurrency=8)
            for index, block in enumerate(blocks[1:], start=1):
                code = runnable(block, server)
                try:
                    exec(compile(code, f"README.md[workflows block {index}]", "exec"), namespace)  # noqa: S102
                except Exception as error:
                    pytest.fail(f"README Workflows block {index} failed: {error!r}\n{block}")
    finally:
        app_module._default_app = previous
