"""`conveyor-worker` (and `python -m conveyor worker`): runs an app's tasks,
as `celery -A tasks worker` does.

    conveyor-worker -A tasks:app -c 8 -P process -Q q1,q2 -l info

Prints a banner (address, namespace, queues, tasks, pool, concurrency) on stdout, logs
at INFO to stderr, drains on SIGTERM/SIGINT and stops at once on a second
signal. Exit codes: 0 after a stop, 64 for bad usage (an app that cannot be
loaded), 1 when the worker fails for good.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

from conveyor._common import ADDRESS_ENV, NAMESPACE_ENV, SERVICES, check_endpoints
from conveyor._handler import POOLS
from conveyor._version import __version__
from conveyor.app import Conveyor
from conveyor.errors import ConveyorError

__all__ = ["load_app", "main"]

EX_USAGE = 64
_LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


class UsageError(Exception):
    """A command line that cannot run; the message says what to fix."""


def load_app(spec: str) -> Conveyor:
    """The app named by `module:attribute`, or by `module` alone (its `app`
    or `celery` attribute, else its only `Conveyor`). The current directory
    is importable, as with Celery."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(
            f"cannot import {module_name!r} ({error}); run from the directory that holds it, or set PYTHONPATH"
        ) from error
    if attribute:
        app: Any = module
        for part in attribute.split("."):
            app = getattr(app, part, None)
        if not isinstance(app, Conveyor):
            raise UsageError(f"{spec!r} is not a conveyor.Conveyor app: give -A module:attribute naming one")
        return app
    for name in ("app", "celery"):
        if isinstance(getattr(module, name, None), Conveyor):
            return getattr(module, name)
    apps = [value for value in vars(module).values() if isinstance(value, Conveyor)]
    if len(apps) != 1:
        raise UsageError(f"found {len(apps)} Conveyor apps in {module_name!r}: name one with -A {module_name}:attribute")
    return apps[0]


def parser(prog: str = "conveyor-worker") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run a Conveyor app's tasks (like `celery worker`).")
    p.add_argument("-A", "--app", required=True, help="the app: module:attribute, or a module with an `app`")
    p.add_argument("-c", "--concurrency", type=int, default=None, help="tasks run at once (default: CPU count)")
    p.add_argument("-P", "--pool", choices=POOLS, default="threads", help="where sync tasks run (default threads)")
    p.add_argument("-Q", "--queues", default="", help="comma-separated queues (default: default)")
    p.add_argument("-l", "--loglevel", default="info", help="debug, info, warning, error (default info)")
    p.add_argument("-n", "--hostname", default=None, help="worker id (default: host-pid)")
    p.add_argument(
        "-s",
        "--server",
        default=None,
        help=f"server address(es), over the app's and ${ADDRESS_ENV} (--endpoint, the app's endpoints and CONVEYOR_<SERVICE>_ADDR "
        "still win for their service)",
    )
    p.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="SERVICE=URL",
        help=f"one service's address ({', '.join(SERVICES)}), over the app's endpoints, "
        "CONVEYOR_<SERVICE>_ADDR and -s; repeatable",
    )
    p.add_argument(
        "--namespace",
        default=None,
        metavar="NAME",
        help=f"the namespace whose tasks to run, over the app's and ${NAMESPACE_ENV} (default: the server's default)",
    )
    p.add_argument(
        "--tls-ca",
        default=None,
        metavar="FILE",
        help="PEM CA bundle to trust for TLS, over the app's and $CONVEYOR_TLS_CA (default: the system roots)",
    )
    p.add_argument(
        "--tls-cert",
        default=None,
        metavar="FILE",
        help="PEM client certificate for mTLS (with --tls-key), over the app's and $CONVEYOR_TLS_CERT",
    )
    p.add_argument(
        "--tls-key",
        default=None,
        metavar="FILE",
        help="PEM private key of --tls-cert, over the app's and $CONVEYOR_TLS_KEY",
    )
    p.add_argument("--max-tasks-per-child", type=int, default=None, help="process pool: replace a child after N tasks")
    p.add_argument("--max-memory-per-child", type=int, default=None, help="process pool: replace a child above N KiB RSS")
    p.add_argument("--grace-period", type=float, default=30.0, help="seconds a drain waits for running tasks")
    return p


def parse_endpoints(items: Sequence[str]) -> dict[str, str]:
    """`--endpoint SERVICE=URL` values as an `endpoints` mapping."""
    endpoints: dict[str, str] = {}
    for item in items:
        service, sep, url = item.partition("=")
        if not sep or not url.strip():
            raise UsageError(f"--endpoint {item!r}: give SERVICE=URL, SERVICE one of {', '.join(SERVICES)}")
        endpoints[service.strip()] = url.strip()
    try:
        return check_endpoints(endpoints)
    except ValueError as error:
        raise UsageError(f"--endpoint: {error}") from error


def banner(app: Conveyor, worker: Any, spec: str) -> str:
    tasks = "\n".join(f"    . {name}  [{worker.pool_of(h)}]" for name, h in sorted(worker.handlers.items()))
    return (
        f"conveyor-worker {__version__} (Python {platform.python_version()})\n"
        f"  app:          {spec}\n"
        f"  address:      {app.address}\n"
        f"  dispatch:     {worker.dispatch_address}\n"
        f"  namespace:    {worker.namespace or 'default'}\n"
        f"  tls:          {worker.tls}\n"
        f"  worker id:    {worker.worker_id}\n"
        f"  queues:       {', '.join(worker.queues)}\n"
        f"  pool:         {worker.pool}\n"
        f"  concurrency:  {worker.concurrency}\n"
        f"  tasks:\n{tasks}\n"
    )


def run(args: argparse.Namespace) -> int:
    level = getattr(logging, str(args.loglevel).upper(), None)
    if not isinstance(level, int):
        raise UsageError(f"unknown log level {args.loglevel!r}: use debug, info, warning or error")
    logging.basicConfig(level=level, format=_LOG_FORMAT, stream=sys.stderr)
    app = load_app(args.app)
    if args.server:
        app.address = args.server
    if args.endpoint:
        app.endpoints = {**app.endpoints, **parse_endpoints(args.endpoint)}
        app.close()  # a client made before now would keep the old addresses
    if args.namespace is not None:
        app.namespace = args.namespace
        app.close()  # nor the old namespace
    if args.tls_ca or args.tls_cert or args.tls_key:
        app.tls_ca = args.tls_ca or app.tls_ca
        app.tls_cert = args.tls_cert or app.tls_cert
        app.tls_key = args.tls_key or app.tls_key
        app.close()  # nor the old TLS settings
    if not app.tasks:
        raise UsageError(f"the app {args.app!r} has no tasks: decorate functions with @app.task in its module")
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] or None
    try:
        worker = app.worker(
            concurrency=args.concurrency or os.cpu_count() or 1,
            queues=queues,
            pool=args.pool,
            worker_id=args.hostname,
            grace_period=args.grace_period,
            max_tasks_per_child=args.max_tasks_per_child,
            max_memory_per_child=args.max_memory_per_child,
        )
    except ValueError as error:
        raise UsageError(str(error)) from error
    except ConveyorError as error:
        if error.code is not None:
            raise
        # A configuration error (TLS files, an http:// address with TLS).
        raise UsageError(str(error)) from error
    sys.stdout.write(banner(app, worker, args.app))
    sys.stdout.flush()
    worker.run()
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "conveyor-worker") -> int:
    args = parser(prog).parse_args(argv)
    try:
        return run(args)
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EX_USAGE
    except ConveyorError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
