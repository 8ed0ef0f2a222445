"""Heavy imports started on a thread ahead of need, so a program does other work while they load.

A trainer imports MLflow only to log its model after the last step, and the launcher imports MLflow's pyfunc and
torch only to check that model: done then, they add seconds to every training's end. Started early on a daemon
thread, they overlap the training instead. Never raises: the real import later reports what fails.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading


def import_in_background(*modules: str) -> threading.Thread:
    """Import ``modules`` in order on a daemon thread, skipping those whose top-level package is not installed."""

    def _import() -> None:
        for name in modules:
            try:
                if importlib.util.find_spec(name.split(".", 1)[0]) is not None:
                    importlib.import_module(name)
            except Exception:
                return

    thread = threading.Thread(target=_import, name="gpuflow-imports", daemon=True)
    thread.start()
    return thread
