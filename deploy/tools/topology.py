"""deploy/compose.yaml as data, for two scripts:

- `check COMPOSE`: the topology assertions of scripts/check-deploy (every
  role present, two dispatchers and two schedulers, Redis with AOF, every
  Conveyor process given a --peer for each role it does not serve, ...);
- `plan COMPOSE --out DIR ...`: scripts/test-compose-topology's plan to run
  the same services as local processes. Commands and environment are the
  compose file's own; only hostnames are rewritten to 127.0.0.1, each
  listening port of each instance gets a local port of its own, and the
  paths of bind-mounted files become their host paths.

Needs PyYAML. Errors say what to change in the compose file or here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

ROLES = ("submission", "results", "scheduling", "dispatch")
SERVER_DOCKERFILE = "deploy/Dockerfile"
GRPC_PORT = 50051
METRICS_PORT = 9464
REDIS_PORT = 6379


class TopologyError(Exception):
    pass


def load(path: Path) -> dict:
    import yaml  # noqa: PLC0415 (PyYAML lives in the deploy venv)

    with path.open() as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise TopologyError(f"{path}: no `services` mapping")
    return data


def replicas(svc: dict) -> int:
    return int((svc.get("deploy") or {}).get("replicas", svc.get("scale", 1)))


def dockerfile(svc: dict) -> str | None:
    build = svc.get("build")
    if not isinstance(build, dict):
        return None
    # The context is relative to the compose file (in deploy/), the
    # Dockerfile to the context; the result is relative to the repository.
    return os.path.normpath(os.path.join("deploy", build.get("context", "."), build.get("dockerfile", "Dockerfile")))


def command(name: str, svc: dict) -> list[str]:
    cmd = svc.get("command", [])
    if isinstance(cmd, str):
        raise TopologyError(f"{name}: write `command` as a list, so that no shell splitting is involved")
    return [str(word) for word in cmd]


def environment(name: str, svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        raise TopologyError(f"{name}: write `environment` as a mapping")
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def roles(name: str, svc: dict) -> list[str]:
    """The roles a Conveyor service serves (`serve ROLE...`), else []."""
    if dockerfile(svc) != SERVER_DOCKERFILE:
        return []
    cmd = command(name, svc)
    if not cmd or cmd[0] != "serve":
        raise TopologyError(f"{name}: a service of {SERVER_DOCKERFILE} must run `serve ROLE...` (got {cmd})")
    served = []
    for word in cmd[1:]:
        if word.startswith("-"):
            break
        served.append(word)
    return served


def flag_values(cmd: list[str], flag: str) -> list[str]:
    values = []
    for i, word in enumerate(cmd):
        if word == flag and i + 1 < len(cmd):
            values.append(cmd[i + 1])
        elif word.startswith(flag + "="):
            values.append(word.split("=", 1)[1])
    return values


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text.strip())
    if not match:
        raise TopologyError(f"cannot read the duration {text!r} (use e.g. 10s or 1m)")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def bind_mounts(name: str, svc: dict, deploy_dir: Path) -> dict[str, Path]:
    """Container path -> host path of each bind mount (named volumes left out)."""
    mounts = {}
    for volume in svc.get("volumes") or []:
        if not isinstance(volume, str):
            raise TopologyError(f"{name}: write volumes in the short form SOURCE:TARGET[:ro]")
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (deploy_dir / source).resolve()
    return mounts


# --- check ---------------------------------------------------------------------------


def check(data: dict, deploy_dir: Path) -> list[str]:
    """The topology's assertions; returns the ok lines, raises on the first failure."""
    services = data["services"]
    ok = []

    def fail(message: str) -> None:
        raise TopologyError(message)

    by_role: dict[str, list[str]] = {role: [] for role in ROLES}
    for name, svc in services.items():
        for role in roles(name, svc):
            if role not in by_role:
                fail(f"{name}: unknown role {role!r} (roles: {', '.join(ROLES)})")
            by_role[role].append(name)
        df = dockerfile(svc)
        if df is not None and not (deploy_dir.parent / df).is_file():
            fail(f"{name}: build names {df}, which does not exist")
    for role, names in by_role.items():
        if not names:
            fail(f"no service serves {role}: add one running `serve {role}`")
        count = sum(replicas(services[n]) for n in names)
        want = 2 if role in ("dispatch", "scheduling") else 1
        if count < want:
            fail(f"{role}: {count} instance(s); the topology runs {want} (deploy.replicas or a second service)")
        ok.append(f"{role}: {count} instance(s) in {', '.join(names)}")

    # Redis: the production settings, on a named volume.
    redis = services.get("redis")
    if redis is None:
        fail("no `redis` service")
    rcmd = command("redis", redis)
    for flag, value in (("--appendonly", "yes"), ("--appendfsync", "everysec"), ("--maxmemory-policy", "noeviction")):
        if flag_values(rcmd, flag) != [value]:
            fail(f"redis: command must set {flag} {value} (see deploy/README.md), got {rcmd}")
    data_volumes = [v for v in redis.get("volumes") or [] if isinstance(v, str) and v.split(":")[1:2] == ["/data"]]
    if not data_volumes or data_volumes[0].split(":")[0] not in (data.get("volumes") or {}):
        fail("redis: mount a named volume (declared under top-level `volumes`) at /data, where the AOF lives")
    if not redis.get("healthcheck"):
        fail("redis: add a healthcheck; the Conveyor services wait for it")
    ok.append("redis: appendonly yes, appendfsync everysec, maxmemory-policy noeviction, volume at /data")

    # Conveyor services: peers, store, listen address, healthcheck, grace.
    for name, svc in services.items():
        served = roles(name, svc)
        if not served:
            continue
        cmd, env = command(name, svc), environment(name, svc)
        peers = {}
        for value in flag_values(cmd, "--peer"):
            role, _, url = value.partition("=")
            peers[role] = url
        for role in ROLES:
            if role in served:
                continue
            url = peers.get(role)
            if url is None:
                fail(f"{name}: no --peer {role}=URL: calls for {role} would answer UNIMPLEMENTED")
            match = re.fullmatch(r"http://([A-Za-z0-9_.-]+):(\d+)", url)
            if not match or match.group(1) not in by_role[role] or int(match.group(2)) != GRPC_PORT:
                fail(f"{name}: --peer {role}={url} must be http://SERVICE:{GRPC_PORT} with SERVICE one of {by_role[role]}")
        store = env.get("CONVEYOR_STORE", "")
        if store != f"redis://redis:{REDIS_PORT}":
            fail(f"{name}: CONVEYOR_STORE must be redis://redis:{REDIS_PORT} (got {store!r})")
        if env.get("CONVEYOR_LISTEN") != f"0.0.0.0:{GRPC_PORT}":
            fail(f"{name}: CONVEYOR_LISTEN must be 0.0.0.0:{GRPC_PORT}: a container's loopback is unreachable")
        if env.get("CONVEYOR_METRICS_LISTEN") != f"0.0.0.0:{METRICS_PORT}":
            fail(f"{name}: CONVEYOR_METRICS_LISTEN must be 0.0.0.0:{METRICS_PORT} (the healthcheck reads /healthz there)")
        if not svc.get("healthcheck"):
            fail(f"{name}: add a healthcheck")
        grace = seconds(env.get("CONVEYOR_GRACE", "10s"))
        stop = seconds(str(svc.get("stop_grace_period", "10s")))
        if stop <= grace:
            fail(f"{name}: stop_grace_period ({stop:g}s) must exceed CONVEYOR_GRACE ({grace:g}s), or the drain is cut")
        mounts = bind_mounts(name, svc, deploy_dir)
        for flag in ("--schedules", "--task-defaults"):
            for path in flag_values(cmd, flag):
                if path not in mounts:
                    fail(f"{name}: {flag} {path} is not a bind-mounted file")
                if not mounts[path].is_file():
                    fail(f"{name}: {flag} {path} mounts {mounts[path]}, which does not exist")
        ok.append(f"{name}: serves {'+'.join(served)}; --peer for {', '.join(sorted(peers))}")
    for role in ("scheduling",):
        for name in by_role[role]:
            if not flag_values(command(name, services[name]), "--schedules"):
                fail(f"{name}: pass --schedules (the mounted schedules file)")
    for name in by_role["submission"]:
        if not flag_values(command(name, services[name]), "--task-defaults"):
            fail(f"{name}: pass --task-defaults (the mounted task defaults file)")

    # Workers: one per example SDK, pointed at a dispatcher.
    workers = {dockerfile(svc): name for name, svc in services.items() if not roles(name, svc)}
    for df in ("deploy/worker-python.Dockerfile", "deploy/worker-go.Dockerfile"):
        name = workers.get(df)
        if name is None:
            fail(f"no worker service built from {df}")
        addr = environment(name, services[name]).get("CONVEYOR_ADDR", "")
        match = re.fullmatch(r"http://([A-Za-z0-9_.-]+):(\d+)", addr)
        if not match or match.group(1) not in by_role["dispatch"]:
            fail(f"{name}: CONVEYOR_ADDR must be http://SERVICE:{GRPC_PORT} of a dispatch service (got {addr!r})")
        ok.append(f"{name}: worker from {df}, CONVEYOR_ADDR={addr}")

    # Published ports: gRPC only on submission, otherwise metrics only.
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            container = int(str(port).rsplit(":", 1)[-1].split("/")[0].split("-")[0])
            if container == GRPC_PORT and "submission" not in roles(name, svc):
                fail(f"{name}: publishes {GRPC_PORT}; only submission's gRPC port is published (clients need one address)")
            if container not in (GRPC_PORT, METRICS_PORT):
                fail(f"{name}: publishes {port}; only gRPC (submission) and metrics ({METRICS_PORT}) are published")
            if container == METRICS_PORT and not str(port).startswith("127.0.0.1:"):
                fail(f"{name}: publishes metrics as {port}; bind it to 127.0.0.1 (/metrics is not for the outside)")
    published = [name for name, svc in services.items() if any(str(p).endswith(f":{GRPC_PORT}") for p in svc.get("ports") or [])]
    if published != by_role["submission"][:1]:
        fail(f"exactly one submission service publishes {GRPC_PORT}; found {published}")
    ok.append(f"published: gRPC {GRPC_PORT} on {published[0]} only; metrics on loopback")
    return ok


# --- plan ----------------------------------------------------------------------------

# Where an image's files are on this machine, for what a Dockerfile's COPY
# lines do not say (files built in an earlier stage). File COPYs from the
# build context (`COPY clients/python/examples/worker.py /app/worker.py`) are
# read from the Dockerfiles themselves.
def local_table(args: argparse.Namespace) -> dict[str, str]:
    return {
        "conveyor": args.conveyor_bin,
        "python": args.python,
        "/usr/local/bin/conveyor-example-worker": args.go_worker,
    }


def entrypoint_and_copies(path: Path, repo: Path) -> tuple[list[str], dict[str, str]]:
    entrypoint: list[str] = []
    copies = {}
    for line in path.read_text().splitlines():
        if line.startswith("ENTRYPOINT "):
            entrypoint = json.loads(line[len("ENTRYPOINT ") :])
        match = re.fullmatch(r"COPY (?!--)(\S+) (\S+)", line.strip())
        if match and (repo / match.group(1)).is_file():
            copies[match.group(2)] = str(repo / match.group(1))
    if not entrypoint:
        raise TopologyError(f"{path}: no ENTRYPOINT in JSON form")
    return entrypoint, copies


def plan(data: dict, deploy_dir: Path, args: argparse.Namespace) -> None:
    repo = deploy_dir.parent
    services = data["services"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()

    # Instances in compose order; redis is started by scripts/start-redis.
    instances = []  # (instance name, service name, replica index)
    for name, svc in services.items():
        if name == "redis":
            continue
        n = replicas(svc)
        for i in range(n):
            instances.append((name if n == 1 else f"{name}-{i + 1}", name, i))

    # Each instance's listening ports: every 0.0.0.0:PORT in its command and
    # environment. Local ports are handed out in order from --port-base.
    listen = {}  # (instance name, container port) -> local port
    next_port = args.port_base
    for inst, name, _ in instances:
        svc = services[name]
        words = command(name, svc) + list(environment(name, svc).values())
        for port in sorted({int(p) for w in words for p in re.findall(r"0\.0\.0\.0:(\d+)", w)}):
            listen[(inst, port)] = next_port
            next_port += 1
    instance_names = {name: [i for i, n, _ in instances if n == name] for name in services}

    mapping_lines = []
    # HOST:PORT, or HOST/PORT as in bash's /dev/tcp/HOST/PORT, for the hosts
    # that mean a service or the instance itself.
    hosts = sorted([*services, "0.0.0.0", "127.0.0.1", "localhost"], key=len, reverse=True)
    host_port = re.compile(r"(?<![A-Za-z0-9_.-])(" + "|".join(map(re.escape, hosts)) + r")([:/])(\d{2,5})\b")

    def rewrite(text: str, position: int, inst: str) -> str:
        """Service hostnames to 127.0.0.1 and container ports to local ones.
        `position` spreads references to a replicated service over its
        replicas (instance k uses replica k mod n), deterministically."""

        def repl(match: re.Match) -> str:
            host, sep, port = match.group(1), match.group(2), int(match.group(3))
            if host in ("0.0.0.0", "127.0.0.1", "localhost"):
                target = inst
            elif host == "redis" and port == REDIS_PORT:
                return f"127.0.0.1{sep}{args.redis_port}"
            elif host in instance_names and instance_names[host]:
                replicas_of = instance_names[host]
                target = replicas_of[position % len(replicas_of)]
            else:
                return match.group(0)
            local = listen.get((target, port))
            if local is None:
                raise TopologyError(f"{inst}: {match.group(0)} names port {port} of {target}, which does not listen on it")
            if host not in ("0.0.0.0", "127.0.0.1", "localhost"):
                mapping_lines.append(f"  {inst}: {host}{sep}{port} -> {target} at 127.0.0.1{sep}{local}")
            return f"127.0.0.1{sep}{local}"

        return re.sub(host_port, repl, text)

    table = local_table(args)
    summary = []
    wiring = {"instances": [], "redis": f"redis://127.0.0.1:{args.redis_port}"}
    for position, (inst, name, _) in enumerate(instances):
        svc = services[name]
        df = dockerfile(svc)
        if df is None:
            raise TopologyError(f"{name}: no `build`; the local run maps an image's entrypoint through its Dockerfile")
        entrypoint, copies = entrypoint_and_copies(repo / df, repo)
        if "entrypoint" in svc:
            entrypoint = [str(w) for w in svc["entrypoint"]]
        local_entry = []
        for word in entrypoint:
            local = copies.get(word) or table.get(word)
            if local is None:
                raise TopologyError(f"{df}: ENTRYPOINT word {word!r} has no local equivalent: add it to local_table()")
            local_entry.append(local)
        mounts = bind_mounts(name, svc, deploy_dir)
        argv = local_entry + [str(mounts.get(w, rewrite(w, position, inst))) for w in command(name, svc)]
        env = {k: str(mounts.get(v, rewrite(v, position, inst))) for k, v in environment(name, svc).items()}
        stem = f"{position:02d}-{inst}"
        (out / f"{stem}.argv").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (out / f"{stem}.env").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
        health = (svc.get("healthcheck") or {}).get("test")
        if health:
            kind, *words = health if isinstance(health, list) else ["CMD-SHELL", health]
            words = ["sh", "-c", " ".join(words)] if kind == "CMD-SHELL" else words
            words = [rewrite(w, position, inst) for w in words]
            (out / f"{stem}.health").write_bytes(b"\0".join(w.encode() for w in words) + b"\0")
        served = roles(name, svc)
        grpc = listen.get((inst, GRPC_PORT), "")
        metrics = listen.get((inst, METRICS_PORT), "")
        summary.append(f"{stem}\t{name}\t{'+'.join(served) or 'worker'}\t{grpc}\t{metrics}")
        published = any(str(p).endswith(f":{GRPC_PORT}") for p in svc.get("ports") or [])
        wiring["instances"].append(
            {
                "name": inst,
                "service": name,
                "roles": served,
                "grpc": f"127.0.0.1:{grpc}" if grpc else None,
                "metrics": f"127.0.0.1:{metrics}" if metrics else None,
                "published": published,
            }
        )
    (out / "plan.tsv").write_text("\n".join(summary) + "\n")
    (out / "wiring.json").write_text(json.dumps(wiring, indent=2) + "\n")

    print(f"  redis: redis:{REDIS_PORT} -> 127.0.0.1:{args.redis_port} (scripts/start-redis)")
    for (inst, port), local in listen.items():
        print(f"  {inst}: listens on container port {port} -> 127.0.0.1:{local}")
    print("\n".join(dict.fromkeys(mapping_lines)))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="assert the topology")
    c.add_argument("compose", type=Path)
    p = sub.add_parser("plan", help="write the local-process plan")
    p.add_argument("compose", type=Path)
    p.add_argument("--out", required=True)
    p.add_argument("--port-base", type=int, required=True)
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--conveyor-bin", required=True)
    p.add_argument("--python", required=True)
    p.add_argument("--go-worker", required=True)
    args = parser.parse_args(argv)
    deploy_dir = args.compose.resolve().parent
    try:
        data = load(args.compose)
        if args.cmd == "check":
            for line in check(data, deploy_dir):
                print(f"  ok  {line}")
        else:
            check(data, deploy_dir)
            plan(data, deploy_dir, args)
    except TopologyError as error:
        print(f"error: {args.compose}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
