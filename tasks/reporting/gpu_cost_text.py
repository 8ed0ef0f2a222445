"""GPU and cost figures as text, in one place for the three views that show them: ``gpuflow run``'s summary
(:func:`run_gpu_text`, :func:`run_cost_text`), ``gpuflow lineage`` (:func:`lineage_gpu_text`,
:func:`lineage_cost_text`) and the run report (:func:`devices`, :func:`money`, :func:`no_gpu_reasons`).

Each view keeps its own phrasing (a summary line, a table cell, a sentence), built from the same pieces: the
devices, why no GPU was seen, and an amount of money. The figures are the JSON-ready dicts of
:mod:`tasks.reporting.run_data` (``gpu_count``, ``gpu_names``, ``gpu_seconds``, ``missing``, ...). Importing
this module costs nothing beyond the standard library, so the CLI may use it freely.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def devices(figures: Mapping[str, Any]) -> str:
    """``2 x NVIDIA A100, NVIDIA A100`` (one name per device, as recorded), or ``no GPU``."""
    if not figures.get("gpu_count"):
        return "no GPU"
    return f"{figures['gpu_count']} x {', '.join(figures.get('gpu_names') or [])}"


def stage_notes(missing: Iterable[str]) -> list[str]:
    """What was missing, without the ``<stage>: `` each note starts with."""
    return [str(note).split(": ", 1)[-1] for note in missing]


def no_gpu_reasons(missing: Iterable[str]) -> list[str]:
    """Why no GPU was seen (``no GPU: <why>``), each reason once, sorted."""
    return sorted({note for note in stage_notes(missing) if note.startswith("no GPU")})


def money(value: float | None, currency: str, digits: int = 4) -> str:
    """``1,234.5678 USD``; ``n/a`` when the figure is unknown."""
    return "n/a" if value is None else f"{value:,.{digits}f} {currency}"


# -- gpuflow run ----------------------------------------------------------------------------------------


def run_gpu_text(gpu: Mapping[str, Any]) -> str:
    """The whole run's GPUs and GPU-seconds, or why none was used and that costs are in node-hours."""
    run = gpu.get("run") or {}
    if not run.get("gpu_count"):
        reasons = sorted(set(stage_notes(run.get("missing") or []))) or ["NVML saw no device"]
        return "none used (" + "; ".join(reasons) + "); costs in node-hours"
    return f"{devices(run)}: {run.get('gpu_seconds', 0):.1f} GPU-seconds"


def run_cost_text(cost: Mapping[str, Any]) -> str:
    """The run's total, its basis and each stage's total."""
    if not cost:
        return "n/a"
    per_stage = ", ".join(f"{stage} {figures['total']:.5f}" for stage, figures in cost.get("stages", {}).items())
    return f"{cost['run']['total']:.5f} {cost['currency']} ({cost['basis']}; {per_stage})"


# -- gpuflow lineage ------------------------------------------------------------------------------------


def lineage_gpu_text(gpu: Mapping[str, Any]) -> str:
    """The GPUs, GPU-seconds and mean utilisation behind a model version, or why there was no GPU."""
    if not gpu.get("has_gpu"):
        why = sorted({reason.removeprefix("no GPU: ") for reason in no_gpu_reasons(gpu.get("missing", []))})
        return "no GPU" + (f" ({'; '.join(why)})" if why else "")
    util = gpu.get("util_mean_pct")
    util_text = f", util mean {util:.0f}%" if util is not None else ""
    return f"{devices(gpu)}, {gpu['gpu_seconds']:.1f} GPU-s{util_text}"


def lineage_cost_text(cost: Mapping[str, Any]) -> str:
    """One cost figure with its currency and basis."""
    return f"{cost['total']:.4f} {cost['currency']} ({cost['basis']})"
