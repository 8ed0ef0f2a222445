"""Small types every layer shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

Track = Literal["stable", "canary"]
"""One of a rollout's two versions: the champion (stable) or the challenger (canary)."""

LogFn = Callable[[str], None]
"""Where a workload's or a server's output lines go (a Prefect logger's ``info``, ``print``, a list's ``append``)."""
