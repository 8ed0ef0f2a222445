"""``python -m workloads.launcher.entrypoint package.module:function``: the trainer command of an SDK entry point.

Imports ``package.module``, calls ``function(TrainerContext.from_env())`` and ends with the contract's exit
codes: 0 when the function returns; 2 for an entry point that is not ``module:function``, a module or
function that does not exist (one line naming it), a module that fails to import (the user's traceback, once,
then one line) or an environment that is not a launcher's; the code given to ``ctx.fail``; 1 for any other
exception in the user's code (its traceback, then one line: a retry may pass); 130 on SIGINT. Every failure's
line also goes to ``GPUFLOW_FAILURE_FILE``, which the launcher repeats as the launch's last line.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from workloads.exiting import exit_quickly, forget_handled_interrupt
from workloads.sdk.contract import ENV_FAILURE_FILE, EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK

ENTRY = re.compile(r"^(?P<module>[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*):(?P<function>[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*)$")


class EntryPointError(Exception):
    """The entry point cannot be called; the message is the one line to show."""

    def __init__(self, message: str, exit_code: int = EXIT_CONFIG, show_traceback: BaseException | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.cause = show_traceback


def _user_traceback(exc: BaseException) -> str:
    """The traceback from the first frame of the user's code (this module's and importlib's left out)."""
    ours = {__file__, importlib.__file__}
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in ours:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _missing_module(exc: ModuleNotFoundError, module: str) -> bool:
    """True when the module not found is the entry point's own module (or a package above it)."""
    name = exc.name or ""
    return bool(name) and (module == name or module.startswith(name + "."))


def resolve(spec: str) -> Callable[..., Any]:
    """The function named by ``package.module:function``; raises :class:`EntryPointError`."""
    match = ENTRY.match(spec.strip())
    if match is None:
        raise EntryPointError(f"entry point {spec!r} is not of the form package.module:function")
    module_name, function_name = match["module"], match["function"]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if _missing_module(exc, module_name):
            raise EntryPointError(
                f"entry point {spec!r}: no module named {exc.name!r} (is its package installed, or on PYTHONPATH?)"
            ) from None
        raise EntryPointError(
            f"entry point {spec!r}: importing {module_name} failed: {type(exc).__name__}: {exc}", show_traceback=exc
        ) from None
    except Exception as exc:
        raise EntryPointError(
            f"entry point {spec!r}: importing {module_name} failed: {type(exc).__name__}: {exc}", show_traceback=exc
        ) from None
    target: Any = module
    for part in function_name.split("."):
        if not hasattr(target, part):
            raise EntryPointError(f"entry point {spec!r}: module {module_name} has no attribute {function_name!r}")
        target = getattr(target, part)
    if not callable(target):
        raise EntryPointError(f"entry point {spec!r}: {function_name} is a {type(target).__name__}, not a function")
    return target


def _fail(line: str) -> None:
    """The one line, to stderr and to the failure file (when the launcher named one)."""
    print(f"error: {line}", file=sys.stderr, flush=True)
    path = os.environ.get(ENV_FAILURE_FILE, "").strip()
    if path:
        try:
            with open(path, "w") as handle:
                handle.write(" ".join(line.split()) + "\n")
        except OSError:
            pass


def main(argv: Sequence[str] | None = None) -> int:
    from workloads.sdk.context import ContextError, TrainerContext, TrainerFailed

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        _fail("usage: python -m workloads.launcher.entrypoint package.module:function")
        return EXIT_CONFIG
    try:
        function = resolve(args[0])
        context = TrainerContext.from_env()
    except EntryPointError as exc:
        if exc.cause is not None:
            sys.stderr.write(_user_traceback(exc.cause))
        _fail(str(exc))
        return exc.exit_code
    except ContextError as exc:
        _fail(str(exc))
        return EXIT_CONFIG
    try:
        function(context)
    except TrainerFailed as exc:  # ctx.fail: its line is written already
        return exc.exit_code
    except KeyboardInterrupt:
        _fail("interrupted")
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # the user's own sys.exit(n)
        code = exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_FAILED)
        if code != EXIT_OK and not context.failure_file.exists():
            _fail(f"{args[0]} called sys.exit({exc.code!r})")
        return code
    except Exception as exc:
        sys.stderr.write(_user_traceback(exc))
        _fail(f"{args[0]} raised {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    code = main()
    # Under torchrun the process group's C++ threads must be torn down by the final collections (a rank once
    # aborted at exit with "terminate called without an active exception" when they were frozen out of them).
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        sys.stdout.flush()
        forget_handled_interrupt()
        sys.exit(code)
    exit_quickly(code)
