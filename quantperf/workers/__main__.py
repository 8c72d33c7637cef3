"""Entry point of a measurement subprocess: JSON requests on stdin, JSON replies on a
private copy of stdout (anything libraries print goes to stderr instead).

The first request is `init` with the parent's protocol version; a mismatch (a worker started
from another quantperf) is refused with one clear line."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import traceback


def main() -> None:
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # library chatter on stdout must not corrupt the protocol
    sys.stdout = sys.stderr
    from ..fidelity import apply_hub_kernels
    from . import STACK_SIGNAL

    apply_hub_kernels("off")  # whatever the parent's environment says; a configuration may opt in at its load

    if hasattr(signal, STACK_SIGNAL):  # the parent asks for every thread's stack before it kills a silent worker
        faulthandler.register(getattr(signal, STACK_SIGNAL), file=sys.stderr, all_threads=True)
    replies = os.fdopen(reply_fd, "w", buffering=1)
    worker = None
    for line in sys.stdin:
        req = json.loads(line)
        method, kwargs = req["method"], req.get("kwargs", {})
        if method == "exit":
            break
        try:
            if method == "init":
                from ..spec import RunSpec
                from . import PROTOCOL, LocalWorker

                if kwargs.get("protocol") != PROTOCOL:
                    raise RuntimeError(f"worker protocol mismatch: the parent speaks {kwargs.get('protocol')}, this "
                                       f"quantperf ({__file__}) speaks {PROTOCOL}: install the same quantperf on both "
                                       "sides")
                worker = LocalWorker(RunSpec.from_dict(kwargs["spec"]), kwargs.get("model_options"))
                result = worker.hello()
            else:
                result = worker.call(method, kwargs)
            replies.write(json.dumps({"result": result}, default=str) + "\n")
        except Exception as exc:
            traceback.print_exc()
            replies.write(json.dumps({"error": type(exc).__name__, "message": str(exc)}) + "\n")
    replies.close()
    # Everything is answered: skip the interpreter's teardown, which can hang for minutes on
    # library threads and pools (inductor's compile workers, CUDA contexts) and gains nothing.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
