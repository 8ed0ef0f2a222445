"""The quality-gate block: what a challenger must reach before it may replace the champion."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from blocks.loading import load_saved


class QualityGate(Block):
    """Thresholds the evaluate stage checks: a floor on accuracy and a cap on regression vs the champion.

    Example:
        ```python
        from blocks.quality_gate import QualityGate
        gate = QualityGate.load("BLOCK_NAME")  # e.g. "production"
        ```
    """

    _block_type_name = "gpuflow Quality Gate"
    _block_type_slug = "gpuflow-quality-gate"

    min_accuracy: float = Field(default=0.9, ge=0.0, le=1.0, description="Lowest test accuracy that passes.")
    max_regression: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="Largest drop in test accuracy against the champion (absolute, 0.02 = 2 points) that passes.",
    )
    max_ece: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Largest expected calibration error that passes; empty: not checked."
    )


def resolve_gate(name: str | None) -> QualityGate:
    """A saved block by name, or the default thresholds when no name is given."""
    return load_saved(QualityGate, name) if name else QualityGate()
