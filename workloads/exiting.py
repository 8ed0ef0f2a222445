"""How gpuflow's programs end: with the exit code they chose, and without the interpreter's final garbage collections.

Those collections walk every torch and MLflow object a trainer or launcher loaded (one to two seconds each time a
training ends, on the pipeline's critical path); nothing left needs finalising, so the objects are frozen out of
their way. atexit handlers still run and open files are still flushed.
"""

from __future__ import annotations

import gc
import sys
from typing import NoReturn


def forget_handled_interrupt() -> None:
    """Make a Ctrl-C the program already handled stay handled, so ``python -m`` ends with the program's own code.

    CPython 3.11 (tests/unit/test_exiting.py shows it) remembers a KeyboardInterrupt that ended any code it ran
    from a string (a dataclass or namedtuple being built inside an import when Ctrl-C lands) as unhandled, even
    after a caller caught it; under ``python -m`` the interpreter then ends itself by SIGINT (-2 to the parent)
    instead of with the code given to ``sys.exit``. Running a string that finishes clears that memory.
    """
    exec("")


def exit_quickly(code: int) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    forget_handled_interrupt()
    gc.freeze()
    sys.exit(code)
