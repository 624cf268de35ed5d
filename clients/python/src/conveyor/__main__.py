"""`python -m conveyor worker -A tasks:app ...`: the worker command (see
`conveyor.cli`)."""

import sys

from conveyor.cli import main


def _main(argv: list[str]) -> int:
    if not argv or argv[0] != "worker":
        print("usage: python -m conveyor worker -A module:app [options]  (see: python -m conveyor worker --help)", file=sys.stderr)
        return 64
    return main(argv[1:], prog="python -m conveyor worker")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
