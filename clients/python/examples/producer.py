"""The example producer of the cross-language matrix.

Submits add(2, 3), xsum([1, 2, 3.5]), lang() and fail("boom from python") to
$CONVEYOR_QUEUE on $CONVEYOR_ADDR, awaits each (20 s) and prints one JSON line.
Exit 1, with the error on stderr, on anything unexpected.
"""

import json
import os
import sys

from conveyor import Conveyor, TaskFailed

TIMEOUT = 20.0


def main() -> int:
    queue = os.environ.get("CONVEYOR_QUEUE") or "default"
    with Conveyor(os.environ.get("CONVEYOR_ADDR") or "http://127.0.0.1:50051") as app:
        add = app.send_task("add", [2, 3], queue=queue)
        xsum = app.send_task("xsum", [[1, 2, 3.5]], queue=queue)
        lang = app.send_task("lang", queue=queue)
        fail = app.send_task("fail", ["boom from python"], queue=queue)
        report = {
            "producer": "python",
            "add": add.get(timeout=TIMEOUT),
            "xsum": xsum.get(timeout=TIMEOUT),
            "lang": lang.get(timeout=TIMEOUT),
        }
        try:
            value = fail.get(timeout=TIMEOUT)
        except TaskFailed as error:
            report["fail"] = {
                "type": error.type,
                "message": error.message,
                "has_traceback": bool(error.traceback),
            }
        else:
            raise RuntimeError(f"fail() returned {value!r} instead of failing")
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # noqa: BLE001 - the matrix wants a message and exit 1
        print(f"producer: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
