"""Entry point of a measurement subprocess: JSON requests on stdin, JSON replies on a
private copy of stdout (anything libraries print goes to stderr instead)."""

from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> None:
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # library chatter on stdout must not corrupt the protocol
    sys.stdout = sys.stderr
    replies = os.fdopen(reply_fd, "w", buffering=1)
    worker = None
    for line in sys.stdin:
        req = json.loads(line)
        method, kwargs = req["method"], req.get("kwargs", {})
        if method == "exit":
            break
        try:
            if method == "init":
                from .engine import LocalWorker
                from .spec import RunSpec

                worker = LocalWorker(RunSpec.from_dict(kwargs["spec"]), kwargs.get("model_options"))
                result = None
            else:
                result = worker.call(method, kwargs)
            replies.write(json.dumps({"result": result}, default=str) + "\n")
        except Exception as exc:
            traceback.print_exc()
            replies.write(json.dumps({"error": type(exc).__name__, "message": str(exc)}) + "\n")
    replies.close()


if __name__ == "__main__":
    main()
