"""The image rules of deploy/README.md, checked on the Dockerfiles' text (for
scripts/check-deploy; it runs hadolint too when that can be installed, and
this check either way, since hadolint knows nothing of these rules):

- every image: multi-stage, base images fully qualified (podman refuses
  short names), a numeric non-root USER in the final stage, a JSON ENTRYPOINT;
- deploy/Dockerfile: the dependency layer (`cargo chef cook`) is built
  before the sources are copied, the final stage is Debian slim or
  distroless/cc and copies the one `conveyor` binary, ENTRYPOINT
  ["conveyor"], EXPOSE 50051 and 9464;
- .dockerignore keeps build outputs and virtualenvs out of the context.

    python dockerfile_check.py REPO_ROOT
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

IMAGES = ("deploy/Dockerfile", "deploy/worker-python.Dockerfile", "deploy/worker-go.Dockerfile")


class RuleError(Exception):
    pass


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def stages(instrs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instrs:
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def check_image(root: Path, rel: str) -> str:
    instrs = instructions(root / rel)
    staged = stages(instrs)
    if len(staged) < 2:
        raise RuleError(f"{rel}: build in stages: the toolchain must not ship in the image")
    aliases = set()
    for stage in staged:
        image, _, alias = stage[0][1].partition(" AS ")
        if image not in aliases and not re.match(r"[a-z0-9.-]+\.[a-z]+(:\d+)?/", image):
            raise RuleError(f"{rel}: FROM {image}: name the registry (docker.io/library/…): podman refuses short names")
        aliases.add(alias.strip())
    final = staged[-1]
    users = [args for word, args in final if word == "USER"]
    if not users or not re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]):
        raise RuleError(f"{rel}: the final stage needs a numeric non-root USER (runAsNonRoot can only verify numbers)")
    entry = [args for word, args in final if word == "ENTRYPOINT"]
    if not entry:
        raise RuleError(f"{rel}: no ENTRYPOINT in the final stage")
    try:
        entrypoint = json.loads(entry[-1])
    except json.JSONDecodeError:
        raise RuleError(f"{rel}: write ENTRYPOINT in JSON form, so that signals reach the process") from None
    return f"{len(staged)} stages, USER {users[-1]}, ENTRYPOINT {entrypoint}"


def check_server(root: Path) -> str:
    rel = "deploy/Dockerfile"
    instrs = instructions(root / rel)
    runs = [(i, args) for i, (word, args) in enumerate(instrs) if word == "RUN"]
    copies = [(i, args) for i, (word, args) in enumerate(instrs) if word == "COPY"]
    cook = next((i for i, args in runs if "cargo chef cook" in args), None)
    build = next((i for i, args in runs if "cargo build --release" in args), None)
    if cook is None or build is None:
        raise RuleError(f"{rel}: needs `cargo chef cook` (the cached dependency layer) and `cargo build --release`")
    sources = [i for i, args in copies if args == ". ." and cook < i < build]
    if not sources:
        raise RuleError(f"{rel}: copy the sources (COPY . .) after `cargo chef cook` and before `cargo build`")
    final = stages(instrs)[-1]
    base = final[0][1].split(" AS ")[0]
    if not re.search(r"/(debian:[\w.-]*slim|distroless/cc[\w.-]*)(:|$)|debian:\$\{\w+\}-slim", base):
        raise RuleError(f"{rel}: the runtime stage should be debian:*-slim or distroless/cc (got {base})")
    final_copies = [args for word, args in final if word == "COPY"]
    if len(final_copies) != 1 or not final_copies[0].endswith("/conveyor"):
        raise RuleError(f"{rel}: the runtime stage copies the one conveyor binary and nothing else ({final_copies})")
    if [args for word, args in final if word == "ENTRYPOINT"] != ['["conveyor"]']:
        raise RuleError(f'{rel}: ENTRYPOINT ["conveyor"]')
    exposed = {p for word, args in final if word == "EXPOSE" for p in args.split()}
    if not {"50051", "9464"} <= exposed:
        raise RuleError(f"{rel}: EXPOSE 50051 9464 (gRPC, metrics); got {sorted(exposed)}")
    return "cargo-chef dependency layer before the sources; one binary on " + base


def check_dockerignore(root: Path) -> str:
    path = root / ".dockerignore"
    if not path.is_file():
        raise RuleError(".dockerignore missing at the repository root")
    lines = {line.strip() for line in path.read_text().splitlines()}
    for pattern in ("target/", "**/node_modules/", "**/.venv/", ".git"):
        if pattern not in lines:
            raise RuleError(f".dockerignore: add {pattern}")
    return "excludes target/, node_modules, virtualenvs, .git"


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(".")
    try:
        for rel in IMAGES:
            print(f"  ok  {rel}: {check_image(root, rel)}")
        print(f"  ok  deploy/Dockerfile: {check_server(root)}")
        print(f"  ok  .dockerignore: {check_dockerignore(root)}")
    except RuleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
