"""``python -m workloads.trainer.launch <torchrun arguments>``: torchrun that ends with the trainer's exit code.

torchrun (``python -m torch.distributed.run``) exits 1 whatever its workers exited with, which hides the
trainer's permanent codes (2 configuration, 3 dataset) from a Kubernetes podFailurePolicy: a Job would retry a
training that can never pass. This runs torchrun unchanged (same arguments, same agent, same rendezvous) and
only changes how it ends: with the workers' own code (see :func:`group_exit_code`), one line on stderr, and no
log folder left behind (torchrun's default, ``/tmp/torchelastic_*``, is never removed).
torchrun's own warning and error lines (which worker got SIGTERM, which exit code) are silenced unless ``LOGLEVEL``
is set (torchrun's own switch): that last line says the same, once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from workloads.trainer.config import EXIT_FAILED, EXIT_OK


def group_exit_code(codes: Sequence[int]) -> int:
    """One exit code for the failed workers' codes (negative: killed by that signal), as the pod should end.

    A worker's own code wins over a signal, the highest one first (the trainer's ranks agree on the highest code,
    so a permanent 2 or 3 is not hidden by a peer's 1). Without one: the first signal that is not the SIGTERM
    torchrun sends the survivors once a worker failed, as ``128 + signal`` (the shell's convention).
    """
    own = [code for code in codes if code > 0]
    if own:
        return max(own)
    signals = [-code for code in codes if code < 0]
    cause = next((s for s in signals if s != signal.SIGTERM), signals[0] if signals else None)
    return 128 + cause if cause is not None else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    from torch.distributed.run import parse_args

    args = parse_args(list(argv) if argv is not None else None)
    if "LOGLEVEL" not in os.environ:
        _quiet_torchrun()
    with contextlib.ExitStack() as cleanup:
        # Without --log-dir, torchrun makes /tmp/torchelastic_* for its workers' error files and never removes
        # it: one folder per training left on the machine. An own temporary one goes once the agent read them.
        if not args.log_dir:
            args.log_dir = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="gpuflow-torchrun-"))
        return _run(args)


def _run(args: Any) -> int:
    """torchrun with ``args``; its workers' own exit code, or the signal that stopped its agent."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import run

    try:
        run(args)
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items())
        code = group_exit_code([failure.exitcode for _, failure in failures])
        described = ", ".join(f"rank {rank} exited {failure.exitcode}" for rank, failure in failures)
        print(f"error: training group failed ({described}); exit {code}", file=sys.stderr, flush=True)
        return code
    except SignalException as exc:  # the agent itself was told to stop (pod deleted): the workers were stopped
        print(f"error: launcher stopped by {signal.Signals(exc.sigval).name}", file=sys.stderr, flush=True)
        return 128 + int(exc.sigval)
    return EXIT_OK


def _quiet_torchrun() -> None:
    """Silence torch.distributed's loggers: each set its own level (LOGLEVEL or WARNING) when imported."""
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


if __name__ == "__main__":
    sys.exit(main())
