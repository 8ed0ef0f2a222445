"""The report's plots, drawn on Agg canvases (no pyplot global state, no display needed).

Each function takes the runs of one report (the first in full, the others from ``--compare``) and overlays them:
one colour per run. A plot that has nothing to show (no GPU in any run) says so on the image instead of being
left out, so a reader never wonders whether it was forgotten.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from tasks.reporting.run_data import RunData

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
STAGE_STYLES = ("-", "--", ":", "-.")
GIB = 2**30


def _figure(width: float = 11.0, height: float = 4.2) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _say(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, wrap=True)
    axes.set_xticks([])
    axes.set_yticks([])


def convergence_figure(runs: Sequence[RunData], axis: str) -> Figure:
    """Loss (train solid, val dashed) and val accuracy per epoch against wall time, GPU-seconds or cost."""
    pick: dict[str, tuple[str, Callable[[RunData], list[float] | None]]] = {
        "wall": ("training wall time (s)", lambda r: r.wall_seconds()),
        "gpu": ("GPU-seconds", lambda r: r.cumulative_gpu_seconds()),
        "cost": (f"cost ({runs[0].currency})", lambda r: r.cumulative_cost()),
    }
    xlabel, xs_of = pick[axis]
    figure = _figure()
    loss_ax, acc_ax = figure.subplots(1, 2)
    plotted, skipped = 0, []
    for colour, run in zip(COLOURS * 4, runs, strict=False):
        xs = xs_of(run)
        if not run.epochs or xs is None:
            skipped.append(run.label)
            continue
        plotted += 1
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            points = [(x, e[key]) for x, e in zip(xs, run.epochs, strict=True) if key in e]
            loss_ax.plot(*zip(*points, strict=True), style, color=colour, marker=".", label=f"{run.label} {key}")
        points = [(x, e["val_accuracy"]) for x, e in zip(xs, run.epochs, strict=True) if "val_accuracy" in e]
        acc_ax.plot(*zip(*points, strict=True), "-", color=colour, marker=".", label=run.label)
    if not plotted:
        why = "no GPU in these runs" if axis == "gpu" else "no epochs logged"
        _say(loss_ax, f"nothing to plot against {xlabel}: {why}")
        _say(acc_ax, f"nothing to plot against {xlabel}: {why}")
    else:
        loss_ax.set(xlabel=xlabel, ylabel="loss", title=f"loss against {xlabel}")
        acc_ax.set(xlabel=xlabel, ylabel="val_accuracy", title=f"val accuracy against {xlabel}")
        loss_ax.legend(fontsize=7)
        acc_ax.legend(fontsize=7)
        for ax in (loss_ax, acc_ax):
            ax.grid(alpha=0.3)
    if skipped and plotted:
        figure.suptitle(f"not shown ({'no GPU' if axis == 'gpu' else 'no data'}): {', '.join(skipped)}", fontsize=8)
    figure.tight_layout()
    return figure


def _cell(row: dict[str, str], key: str) -> float | None:
    text = row.get(key, "")
    return float(text) if text else None


Series = tuple[list[float], list[float]]  # (seconds since the run's first sample, values)


def _timeline(run: RunData, gpu: bool) -> dict[str, tuple[Series, Series]]:
    """Stage -> (SM utilisation % or host CPU %, GPU memory or process RSS in GiB), known samples only.

    With several GPUs, utilisation is their mean and memory their sum at each sample.
    """
    starts = [s.summary.started_at for s in run.stages.values() if s.series and s.summary.started_at]
    origin = min(starts) if starts else 0.0
    out: dict[str, tuple[Series, Series]] = {}
    for stage in run.stages.values():
        if not stage.series:
            continue
        offset = stage.summary.started_at - origin if stage.summary.started_at else 0.0
        util: dict[float, list[float]] = defaultdict(list)
        mem: dict[float, float] = defaultdict(float)
        for row in stage.series:
            t = float(row["t_s"]) + offset
            u_key, m_key = ("gpu_util_pct", "fb_used_bytes") if gpu else ("host_cpu_pct", "process_rss_bytes")
            u, m = _cell(row, u_key), _cell(row, m_key)
            if u is not None:
                util[t].append(u)
            if m is not None:
                mem[t] += m / GIB
        out[stage.stage] = (
            (sorted(util), [sum(util[t]) / len(util[t]) for t in sorted(util)]),
            (sorted(mem), [mem[t] for t in sorted(mem)]),
        )
    return out


def timeline_figure(runs: Sequence[RunData]) -> Figure:
    """GPU utilisation and memory over the run, a line style per stage; host CPU and RSS when no GPU was seen."""
    gpu = any(r.has_gpu for r in runs)
    figure = _figure(height=5.5)
    util_ax, mem_ax = figure.subplots(2, 1, sharex=True)
    drawn = False
    blank: list[str] = []  # stages with no sample of what is plotted (no GPU while another stage had one)
    for colour, run in zip(COLOURS * 4, runs, strict=False):
        for style, (stage, (util, mem)) in zip(STAGE_STYLES * 4, _timeline(run, gpu).items(), strict=False):
            if not util[0] and not mem[0]:
                blank.append(f"{run.label} {stage}")
                continue
            drawn = True
            util_ax.plot(*util, style, color=colour, label=f"{run.label} {stage}")
            mem_ax.plot(*mem, style, color=colour, label=f"{run.label} {stage}")
    if not drawn:
        _say(util_ax, "no telemetry series recorded")
        _say(mem_ax, "no telemetry series recorded")
    else:
        util_ax.set(ylabel="SM utilisation %" if gpu else "host CPU %")
        mem_ax.set(xlabel="seconds since the run's first sample", ylabel="GPU memory GiB" if gpu else "process RSS GiB")
        util_ax.legend(fontsize=7, ncol=2)
        for ax in (util_ax, mem_ax):
            ax.grid(alpha=0.3)
    title = "GPU utilisation and memory per stage" if gpu else "No GPU was seen: host CPU and process memory instead"
    if gpu and blank:
        title += f"\n(no GPU in: {', '.join(blank)})"
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def cost_figure(runs: Sequence[RunData]) -> Figure:
    """Cost per stage, a bar per run; the idle part (GPU below the idle threshold) hatched."""
    stages = list(dict.fromkeys(stage for r in runs for stage in r.cost["stages"]))
    figure = _figure(width=max(6.0, 1.6 * len(stages) * max(1, len(runs)) + 2), height=4.2)
    ax = figure.subplots(1, 1)
    width = 0.8 / max(1, len(runs))
    for i, (colour, run) in enumerate(zip(COLOURS * 4, runs, strict=False)):
        xs = [k + i * width for k in range(len(stages))]
        totals = [run.cost["stages"].get(s, {}).get("total", 0.0) for s in stages]
        idle = [run.cost["stages"].get(s, {}).get("idle_cost", 0.0) for s in stages]
        ax.bar(xs, totals, width, color=colour, label=f"{run.label} ({run.cost['basis']})")
        if any(idle):
            ax.bar(xs, idle, width, color="none", edgecolor="black", hatch="//", label=f"{run.label} idle")
    ax.set_xticks([k + width * (len(runs) - 1) / 2 for k in range(len(stages))], labels=stages)
    ax.set(ylabel=f"cost ({runs[0].currency})", title="cost per stage")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    return figure


def write_plots(runs: Sequence[RunData], folder: Path) -> dict[str, str]:
    """Write every plot as PNG into ``folder``; returns file name -> title, in report order."""
    plots: dict[str, tuple[str, Figure]] = {
        "convergence_wall.png": ("loss and accuracy against training wall time", convergence_figure(runs, "wall")),
        "convergence_gpu.png": ("loss and accuracy against GPU-seconds", convergence_figure(runs, "gpu")),
        "convergence_cost.png": ("loss and accuracy against cost", convergence_figure(runs, "cost")),
        "gpu_timeline.png": ("GPU utilisation and memory over time, per stage", timeline_figure(runs)),
        "cost_per_stage.png": ("cost per stage", cost_figure(runs)),
    }
    for name, (_, figure) in plots.items():
        figure.savefig(folder / name, format="png")
    return {name: title for name, (title, _) in plots.items()}
