"""The trainer process: started in its own process group, signals forwarded, nothing left behind.

The launcher's SIGINT and SIGTERM go to the trainer's whole group (a second one kills it); when the trainer has
exited, whatever it started and left running is stopped with it (SIGTERM, then SIGKILL), so no process outlives
the launcher. The trainer's output is its own: it writes straight to the launcher's stdout and stderr.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType

from workloads.trainer.config import ConfigError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(returncode: int) -> int:
    """A killed process (negative return code) exits as the shell says: 128 + signal."""
    return 128 - returncode if returncode < 0 else returncode


class TrainerProcess:
    """One trainer command, run in a new process group."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        # "python" is the launcher's own interpreter (the image's, or the venv gpuflow runs from), not whichever
        # python PATH finds first: the trainer then sees the same packages (gpuflow's SDK among them)
        self.command = [sys.executable if part == "python" and i == 0 else part for i, part in enumerate(command)]
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.signalled: int | None = None  # the first signal forwarded
        self._previous: dict[int, object] = {}

    def start(self) -> None:
        """Start it; a command that cannot be run is a :class:`ConfigError` naming it."""
        program = self.command[0]
        if os.sep not in program and shutil.which(program, path=self.env.get("PATH")) is None:
            raise ConfigError(f"trainer command {program!r} was not found on PATH: install it or give its full path")
        try:
            self.proc = subprocess.Popen(self.command, env=self.env, process_group=0)
        except FileNotFoundError:
            raise ConfigError(f"trainer command {program!r} does not exist") from None
        except PermissionError:
            raise ConfigError(
                f"trainer command {program!r} is not executable (chmod +x, or run it by its interpreter)"
            ) from None
        except OSError as exc:
            raise ConfigError(f"trainer command {program!r} cannot be started: {exc.strerror or exc}") from None
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._forward)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        if self.signalled is None:
            self.signalled = signum
            self.signal_group(signum)
        else:  # asked twice: do not wait any longer
            self.signal_group(signal.SIGKILL)

    def poll(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    def wait(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal_group(self, signum: int) -> bool:
        """Send ``signum`` to the whole group; False when no process of it is left."""
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def group_alive(self) -> bool:
        return self.signal_group(0)

    def stop(self, grace: float) -> int:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds; returns the trainer's return code."""
        self.signal_group(signal.SIGTERM)
        code = self.wait(grace)
        if code is None:
            self.signal_group(signal.SIGKILL)
            code = self.wait(30.0)
        assert code is not None
        return code

    def clean_up(self, grace: float = 5.0) -> None:
        """After the trainer exited: stop what it left running in its group, restore our signal handlers."""
        if self.proc is not None and self.group_alive():
            self.signal_group(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.group_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.signal_group(signal.SIGKILL)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
