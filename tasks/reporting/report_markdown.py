"""The run report as Markdown: the stage table, the GPU statement, convergence, start-up and the comparison."""

from __future__ import annotations

import math
from collections.abc import Sequence

from blocks.pricing import GpuPricing
from tasks.reporting.gpu_cost_text import devices, money, no_gpu_reasons
from tasks.reporting.run_data import RunData
from workloads.tags import TAG_DATASET_VERSION, TAG_MODEL_VERSION, TAG_PIPELINE_VERSION
from workloads.trainer.telemetry import DATA_LOADING_SECONDS

# --------------------------------------------------------------------------------------------- markdown


def _n(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f}"


def _stage_table(data: RunData) -> list[str]:
    currency = data.currency
    lines = [
        f"| stage | wall s | GPUs | GPU-s | util mean % | util p95 % | GPU mem peak GiB | power mean W | energy J "
        f"| cost {currency} | idle cost {currency} | basis |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = [(stage, g, data.cost["stages"].get(stage)) for stage, g in data.gpu["stages"].items()]
    rows.append(("**run**", data.gpu["run"], data.cost["run"]))
    for stage, g, c in rows:
        lines.append(
            f"| {stage} | {_n(g.get('duration_s'))} | {devices(g)} | {_n(g.get('gpu_seconds'))} "
            f"| {_n(g.get('util_mean_pct'))} | {_n(g.get('util_p95_pct'))} | {_gib(g.get('mem_peak_bytes'))} "
            f"| {_n(g.get('power_mean_w'))} | {_n(g.get('energy_j'), 0)} "
            f"| {_n(c['total'], 4) if c else 'n/a'} | {_n(c['idle_cost'], 4) if c else 'n/a'} "
            f"| {c['basis'] if c else 'not recorded'} |"
        )
    return lines


def _gpu_statement(data: RunData, pricing: GpuPricing) -> str:
    if data.has_gpu:
        g = data.gpu["run"]
        return (
            f"GPUs: {devices(g)}; {_n(g['gpu_seconds'])} GPU-seconds over the run, utilisation "
            f"{_n(g['util_mean_pct'])} % on average (time-weighted)."
        )
    reasons = no_gpu_reasons(data.gpu["run"]["missing"])  # each note is "<stage>: no GPU: <why>"
    why = f" ({'; '.join(reasons)})" if reasons else ""
    return (
        f"**No GPU was used in this run**{why}. GPU figures are empty and costs are priced by node-hour "
        f"({pricing.node_hour_price:g} {pricing.currency} per node-hour)."
    )


def _convergence_lines(data: RunData) -> list[str]:
    c = data.convergence
    if c is None:
        return ["No training epochs were logged for this run."]
    currency = data.currency
    lines = [
        f"- best {c.metric}: **{_n(c.best_value, 4)}** at epoch {c.best_epoch} of {c.epochs}",
    ]
    if c.target_epoch is not None:
        gpu_part = (
            f"{_n(c.gpu_seconds_to_target, 2)} GPU-s (start-up included)"
            if c.gpu_seconds_to_target is not None
            else "no GPU"
        )
        lines.append(
            f"- {c.target_fraction:.0%} of best ({_n(c.target_value, 4)}) first reached at epoch {c.target_epoch}: "
            f"{c.epochs_to_target} epochs, {_n(c.seconds_to_target, 2)} s of epoch time, {gpu_part}, "
            f"cost {money(c.cost_to_target, currency)}"
        )
    if c.gpu_seconds_after_best is not None:
        lines.append(
            f"- GPU time after the best epoch: {_n(c.gpu_seconds_after_best, 2)} GPU-s "
            "(what stopping at the best epoch would have saved)"
        )
    lines.append(
        f"- plateau: at epoch {c.plateau_epoch} (no improvement for {c.plateau_patience} epochs)"
        if c.plateau_epoch is not None
        else f"- plateau: none (never {c.plateau_patience} epochs without improvement)"
    )
    lines.append(
        f"- divergence: at epoch {c.divergence_epoch}: {c.divergence_reason}" if c.diverged else "- divergence: none"
    )
    if c.throughput_mean is not None:
        steady = "steady" if (c.throughput_cv or 0.0) < 0.1 else "unsteady"
        lines.append(
            f"- throughput: {_n(c.throughput_mean, 0)} samples/s on average, variation "
            f"{_n((c.throughput_cv or 0.0) * 100)} % ({steady})"
        )
    lines.append(f"- why training stopped: {data.stop_reason or 'not recorded'}")
    return lines


def _startup_lines(data: RunData) -> list[str]:
    m = data.train_metrics
    rows = [
        ("Kubernetes: Job created to pod on a node (queueing for a GPU)", m.get("k8s_queue_seconds")),
        ("Kubernetes: pod on a node to container running (image pull, start)", m.get("k8s_start_seconds")),
        ("trainer start to data loaded", m.get("time_to_data_loaded_seconds")),
        ("of which loading the data", m.get(DATA_LOADING_SECONDS)),
        ("trainer start to first optimizer step", m.get("time_to_first_step_seconds")),
        ("trainer total (start to model logged)", m.get("workload_seconds")),
    ]
    known = [(name, value) for name, value in rows if value is not None]
    if not known:
        return ["Not recorded for this run."]
    return ["| moment | seconds |", "|---|---:|", *(f"| {name} | {_n(v, 2)} |" for name, v in known)]


def _compare_table(runs: Sequence[RunData]) -> list[str]:
    lines = [
        "| run | dataset | test accuracy | best val_accuracy | epochs | epochs to 95 % | GPU-s | cost | stopped |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for d in runs:
        c = d.convergence
        lines.append(
            f"| {d.label} | {d.tags.get(TAG_DATASET_VERSION, 'n/a')} | {_n(d.test_metrics.get('accuracy'), 4)} "
            f"| {_n(c.best_value if c else None, 4)} | {c.epochs if c else 0} "
            f"| {c.epochs_to_target if c and c.epochs_to_target is not None else 'n/a'} "
            f"| {_n(d.gpu['run']['gpu_seconds']) if d.has_gpu else 'no GPU'} "
            f"| {money(d.cost['run']['total'], d.currency)} "
            f"| {d.stop_reason or 'n/a'} |"
        )
    return lines


def render_markdown(runs: Sequence[RunData], images: dict[str, str], pricing: GpuPricing) -> str:
    """report.md: the first run in full, the others (``--compare``) beside it in a table and in the plots."""
    data = runs[0]
    what = "pipeline run" if data.kind == "pipeline" else "train run"
    lines = [
        f"# gpuflow report: {what} {data.run_id}",
        "",
        f"- pipeline version: {data.tags.get(TAG_PIPELINE_VERSION, 'n/a')}",
        f"- dataset version: {data.tags.get(TAG_DATASET_VERSION, 'n/a')}",
        f"- model version: {data.tags.get(TAG_MODEL_VERSION, 'n/a')}",
        f"- test accuracy: {_n(data.test_metrics.get('accuracy'), 4)}",
        f"- stage runs: {', '.join(f'{s.stage} {s.run_id}' for s in data.stages.values())}",
        "",
        _gpu_statement(data, pricing),
        "",
        f"## GPU and cost per stage ({data.currency}, {data.cost['basis']})",
        "",
        *_stage_table(data),
        "",
    ]
    notes = list(data.cost["run"]["notes"])
    if notes:
        lines += ["Cost notes:", "", *(f"- {n}" for n in notes), ""]
    lines += ["## Time to useful work (trainer)", "", *_startup_lines(data), ""]
    lines += ["## Convergence", "", *_convergence_lines(data), ""]
    if len(runs) > 1:
        lines += ["## Comparison", "", *_compare_table(runs), ""]
    if images:
        lines += ["## Plots", ""]
        lines += [f"![{title}]({name})" for name, title in images.items()]
        lines.append("")
    missing = data.gpu["run"]["missing"]
    if missing:
        lines += ["## Not measured", "", *(f"- {m}" for m in missing), ""]
    return "\n".join(lines)
