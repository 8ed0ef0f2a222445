"""``gpuflow trainer check``: one short training under the real launcher, read back as the contract's points.

The launcher (``python -m workloads.launcher``) is the judge, exactly as in a pipeline: it starts the command,
relays, enforces the stall timeout and checks a trainer that exited 0. Its output has one documented line per
problem (docs/trainers.md, "Exit codes"); :func:`verdicts` turns those lines into one verdict per point of
``gpuflow-trainer/1`` with the fix for each failure, and names points an earlier failure kept from being
checked. A launch that could not judge the trainer at all (MLflow or the store failing) is a
:class:`CheckNotRun`, not a verdict.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tasks.core.errors import GpuflowError, PermanentError
from tasks.core.trainer_spec import CONTRACT, TrainerSpec
from tasks.training.check_sample import sample_dataset, scratch_run
from tasks.training.trainer_choice import LAUNCHER_MODULE, builtin_trainer, launcher_args
from workloads.store import ObjectStore

DEFAULT_STALL_SECONDS = 120.0
POINTS = (
    "command starts / imports",
    "hyperparameters accepted",
    "metrics reported",
    "model logged",
    "model loads",
    "signature fits the dataset",
    "output shape per task",
    "exit code meaning",
)
START, HPARAMS, METRICS, LOGGED, LOADS, SIGNATURE, OUTPUT, EXIT = POINTS
EXIT_MEANINGS = {0: "trained", 1: "failed, retryable", 2: "configuration error", 3: "data error", 130: "interrupted"}
Status = Literal["pass", "fail", "not checked"]


class CheckNotRun(GpuflowError):
    """The check itself could not run (the dataset, MLflow or the store failed): no verdict on the trainer."""


@dataclass(frozen=True)
class Point:
    name: str
    status: Status
    detail: str = ""  # a failure's what, or why it was not checked
    fix: str = ""

    def line(self) -> str:
        if self.status == "pass":
            return f"{self.name}: pass" + (f" ({self.detail})" if self.detail else "")
        if self.status == "fail":
            return f"{self.name}: FAIL: {self.detail} — fix: {self.fix}"
        return f"{self.name}: not checked ({self.detail})"


@dataclass
class CheckReport:
    points: list[Point]
    dataset: str
    rows: int
    seconds: float
    output: list[str] = field(default_factory=list)  # the launch's stdout then stderr lines

    @property
    def failed(self) -> list[Point]:
        return [p for p in self.points if p.status == "fail"]

    def summary(self) -> str:
        counts = {s: sum(p.status == s for p in self.points) for s in ("pass", "fail", "not checked")}
        verdict = "breaks" if counts["fail"] else "keeps"
        return (
            f"{counts['pass']} passed, {counts['fail']} failed, {counts['not checked']} not checked: the trainer "
            f"{verdict} contract {CONTRACT} ({self.rows} rows per split of {self.dataset}, {self.seconds:.1f} s)"
        )


# ------------------------------------------------------------------------------------------- reading the launch


@dataclass(frozen=True)
class Launch:
    """What the launcher said: its exit code and its stdout/stderr lines."""

    code: int
    stdout: list[str]
    stderr: list[str]
    stall_seconds: float

    @property
    def started(self) -> bool:
        """Whether the trainer's process started (the launcher announces a start before it tries it)."""
        announced = any(line.startswith("launcher: training ") for line in self.stdout)
        return announced and not any(e.startswith("trainer command ") for e in self.errors())

    def errors(self) -> list[str]:
        return [line.removeprefix("error: ") for line in self.stderr if line.startswith("error: ")]

    def breaches(self) -> list[str]:
        prefix = f"contract {CONTRACT}: "
        return [e.removeprefix(prefix) for e in self.errors() if e.startswith(prefix)]

    def trainer_exit(self) -> tuple[int, str] | None:
        """The trainer's non-zero exit code and its failure line, when the launcher reported one."""
        for error in reversed(self.errors()):
            if match := re.match(r"trainer exited (\d+)(?:: (.*)| \(it wrote no failure line\))$", error):
                return int(match[1]), match[2] or ""
        return None

    def stalled(self) -> bool:
        return any("(--stall-timeout); it was stopped" in e for e in self.errors())


def _model_point(breach: str) -> str | None:
    """Which model point a launcher breach line is about (checks.py words them; tests hold them to it)."""
    if "logged no model" in breach:
        return LOGGED
    if "does not load" in breach:
        return LOADS
    if "signature" in breach or "input tensors" in breach:
        return SIGNATURE
    if "validation rows" in breach:
        return OUTPUT
    return None


def _start_fix(reason: str) -> str:
    if "not found on PATH" in reason or "does not exist" in reason:
        return "install the program, or give its full path as the first word of the spec's command"
    if "not executable" in reason:
        return "chmod +x it, or run it by its interpreter (command: [python, train.py])"
    if "no module named" in reason:
        return (
            "install the package, or set working_dir in the spec to the folder your package is in (an entry point "
            "imports from there)"
        )
    if "has no attribute" in reason or "not a function" in reason:
        return "name a function the module defines, as package.module:function"
    return (
        "install the missing package where the trainer runs, or correct the import (the traceback above shows the line)"
    )


def _output_fix(task: str) -> str:
    if task == "regression":
        return "make predict answer [N] or [N, 1] values in the target's units"
    return "make the model answer [N, C] class probabilities (pyfunc) or logits (pytorch) in target.classes order"


MODEL_FIXES = {
    LOGGED: "log the model into MLFLOW_RUN_ID named 'model': ctx.log_model(model), or "
    "mlflow.<flavor>.log_model(model, name='model', signature=...)",
    LOADS: "log it with a flavor whose libraries are installed where it is served, and try "
    "mlflow.pyfunc.load_model(uri) yourself",
    SIGNATURE: "log it with signature=mlflow.models.infer_signature(x, y), x being rows of the dataset's features "
    "(ctx.log_model does this)",
}


def _exit_point(code: int, line: str, explained: bool) -> Point:
    meaning = EXIT_MEANINGS.get(code)
    if meaning is None:
        killed = f" (killed by signal {code - 128})" if 128 < code < 160 else ""
        return Point(
            EXIT,
            "fail",
            f"the trainer exited {code}{killed}, a code the contract gives no meaning",
            "exit 0 once the model is logged, else 1 (retryable), 2 (configuration), 3 (data) or 130 (interrupted)",
        )
    if not line:
        return Point(
            EXIT,
            "fail",
            f"the trainer exited {code} ({meaning}) without a failure line",
            "write one line saying why to GPUFLOW_FAILURE_FILE before a non-zero exit",
        )
    if explained:  # a failure an earlier point names; its code means what the contract says
        return Point(EXIT, "pass", f"{code}: {meaning}, with its failure line")
    fix = {
        1: "see the trainer's output above; a retry in a pipeline would run it again",
        3: "fix the data the line names, or how the trainer reads the dataset",
        130: "let the check run to its end",
    }.get(code, "give the trainer a configuration it accepts")
    return Point(EXIT, "fail", f"the trainer exited {code} ({meaning}): {line}", fix)


def verdicts(launch: Launch, task: str, declared: int) -> list[Point]:
    """One :class:`Point` per contract point, in :data:`POINTS` order; raises :class:`CheckNotRun` when the
    launcher could not judge the trainer."""
    hparams_ok = Point(HPARAMS, "pass", f"{declared} declared type(s)" if declared else "the spec declares no types")
    errors = launch.errors()
    if not launch.started:
        reason = errors[-1] if errors else f"the launcher exited {launch.code} before starting the trainer"
        not_run = [Point(name, "not checked", "the trainer did not start") for name in POINTS]
        if reason.startswith("trainer command "):
            return [Point(START, "fail", reason, _start_fix(reason)), hparams_ok, *not_run[2:]]
        if reason.startswith("MLflow refused the hyperparameters"):
            fix = "rename it: MLflow param names take letters, digits, '_', '-', '.', ' ' and '/' only"
            return [not_run[0], Point(HPARAMS, "fail", reason, fix), *not_run[2:]]
        raise CheckNotRun(f"the launcher could not start the trainer: {reason}")
    exited = launch.trainer_exit()
    points: dict[str, Point] = {START: Point(START, "pass"), HPARAMS: hparams_ok}
    if launch.stalled():
        stall = launch.stall_seconds
        points[METRICS] = Point(
            METRICS,
            "fail",
            f"the trainer wrote no metrics line for {stall:g} s (the stall timeout) and was stopped",
            f"append a line to GPUFLOW_METRICS_FILE (ctx.report) at least every {stall:g} s, or raise the spec's "
            "stall_timeout_seconds",
        )
        why = "the trainer was stopped for stalling"
    elif exited is not None:
        code, line = exited
        explained = False
        if line.startswith("entry point "):
            points[START] = Point(START, "fail", line, _start_fix(line))
            explained = True
        elif code == 2:
            points[HPARAMS] = Point(
                HPARAMS,
                "fail",
                f"the trainer refused its configuration: {line or '(no failure line)'}",
                "give values the trainer accepts; declare hyperparameter_types in the spec so gpuflow refuses "
                "them before any run",
            )
            explained = True
        points[EXIT] = _exit_point(code, line, explained)
        why = f"the trainer exited {code}"
    elif launch.code != 0 and not launch.breaches():
        raise CheckNotRun(f"the launcher failed: {errors[-1] if errors else f'exit {launch.code}'}")
    else:  # exited 0: the launcher checked the outputs
        points[EXIT] = Point(EXIT, "pass", "0: trained")
        breaches = launch.breaches()
        primary = [b for b in breaches if "never reported" in b]
        points[METRICS] = (
            Point(
                METRICS,
                "fail",
                primary[0].split(": append ")[0],
                'append {"step": N, "metrics": {...}} lines with the task\'s primary metric to GPUFLOW_METRICS_FILE '
                "(ctx.report(step, {ctx.primary_metric: value}))",
            )
            if primary
            else Point(METRICS, "pass")
        )
        failed = next(((p, b) for b in breaches if (p := _model_point(b)) is not None), None)
        order = [LOGGED, LOADS, SIGNATURE, OUTPUT]
        for name in order:
            if failed is None or order.index(name) < order.index(failed[0]):
                points[name] = Point(name, "pass")
            elif name == failed[0]:
                fix = MODEL_FIXES.get(name) or _output_fix(task)
                points[name] = Point(name, "fail", failed[1], fix)
            else:
                points[name] = Point(name, "not checked", f"{failed[0]} failed")
        why = ""
    return [points.get(name) or Point(name, "not checked", why) for name in POINTS]


# ------------------------------------------------------------------------------------------- running it


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the launcher (it stops its trainer's group and cleans up), SIGKILL it only if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_launcher(args: list[str], env: dict[str, str], cwd: str, folder: Path, timeout: float) -> tuple[int, str, str]:
    """The launcher's exit code, stdout and stderr; whatever happens, it has exited when this returns."""
    out, err = folder / "launch.out", folder / "launch.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", LAUNCHER_MODULE, *args], cwd=cwd, env=env, stdout=stdout, stderr=stderr
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise CheckNotRun(
                f"the trainer did not finish within --timeout {timeout:g} s; give fewer epochs with --hp or a "
                "larger --timeout"
            ) from None
        except BaseException:
            _stop(proc)
            raise
    return code, out.read_text(errors="replace"), err.read_text(errors="replace")


def check_trainer(
    spec: TrainerSpec, dataset: str, store: ObjectStore, *, rows: int, device: str, timeout: float
) -> CheckReport:
    """Train ``spec`` once on ``rows`` rows of each split of ``dataset`` in a temporary folder removed after."""
    if spec.kind == "builtin":  # the built-in MLP is an SDK entry point like any other: checked the same way
        spec = builtin_trainer(spec.hyperparameters, spec)
    cwd = spec.working_dir or os.getcwd()
    if not Path(cwd).is_dir():
        raise PermanentError(f"the spec's working_dir {cwd} is not a folder")
    began = time.monotonic()
    stall = spec.stall_timeout_seconds or DEFAULT_STALL_SECONDS
    with tempfile.TemporaryDirectory(prefix="gpuflow-trainer-check-") as tmp:
        folder = Path(tmp)
        sample, manifest = sample_dataset(dataset, rows, folder / "store", store)
        tracking_uri, run_id = scratch_run(folder)
        args = launcher_args(
            spec.model_copy(update={"stall_timeout_seconds": stall}),
            dataset_uri=sample,
            training_id="trainer-check",
            device=device,
            early_stop="off",
            patience=5,
            telemetry_interval=None,
        )
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": tracking_uri,
            "MLFLOW_RUN_ID": run_id,
            "GPUFLOW_STORE_URI": str(folder / "store"),
        }
        # torch.export (a torch model's pt2 log) opens torch's compile cache, by default in TMPDIR: a throwaway
        # run keeps it in its own folder, so the check leaves nothing behind
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "torch-cache"))
        code, stdout, stderr = run_launcher(args, env, cwd, folder, timeout)
    launch = Launch(code, stdout.splitlines(), stderr.splitlines(), stall)
    points = verdicts(launch, manifest.task, len(spec.declared_types()))
    return CheckReport(
        points=points,
        dataset=f"{manifest.name}/{manifest.version}",
        rows=rows,
        seconds=time.monotonic() - began,
        output=launch.stdout + launch.stderr,
    )
