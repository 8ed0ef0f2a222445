"""Run a command and say which programs in its process tree spent the CPU: where `make test`'s time goes.

`make test` is CPU-bound on a 2-core machine (its user+system time is about 1.6x its wall time), so what shortens it
is less CPU, and pytest's ``--durations`` cannot say whose: most of it is spent in processes the tests start
(launchers, trainers, model servers, Prefect and MLflow servers). This samples the command's descendants every
``--interval`` seconds with psutil, groups them by program (``python -m workloads.server`` and the like, whichever
virtualenv runs it) and prints a table: processes, CPU seconds, share, and seconds per process.

    .venv/bin/python tools/cpu_by_program.py -- .venv/bin/python -m pytest tests/e2e/test_cli_run.py

A process is seen from its first sample; what it spends after its last one (at most one interval) and what
processes shorter than an interval spend is counted as "unattributed": the kernel's total for the whole tree
(``RUSAGE_CHILDREN``) minus what the samples saw.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass
class Seen:
    program: str
    cpu: float = 0.0  # user + system seconds at the last sample


def program_of(cmdline: list[str]) -> str:
    """A name for the program a command line runs: ``-m module``, the script's name, or the executable's."""
    if not cmdline:
        return "?"
    executable = Path(cmdline[0]).name
    if not re.fullmatch(r"python[\d.]*", executable):
        return executable
    args = iter(cmdline[1:])
    for arg in args:
        if arg == "-m":
            module = next(args, "?")
            if module == "uvicorn" and any("prefect" in part for part in cmdline):
                return "-m uvicorn (Prefect API)"
            return f"-m {module}"
        if arg == "-c":  # pytest-xdist's workers are started by execnet this way
            return "pytest-xdist worker" if "sys.stdin" in next(args, "") else "python -c ..."
        if arg in ("-X", "-W"):  # interpreter options with a value
            next(args, None)
        elif not arg.startswith("-"):
            return Path(arg).name
    return executable


def sample(root: psutil.Process, seen: dict[tuple[int, float], Seen]) -> None:
    """Record the CPU so far of ``root`` and its descendants, keyed by (pid, start time): a reused pid is another
    process. A process whose parent died is adopted by init and leaves the tree: its CPU counts as unattributed."""
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for proc in tree:
        try:
            with proc.oneshot():
                key = (proc.pid, proc.create_time())
                times = proc.cpu_times()
                entry = seen.get(key)
                if entry is None:
                    entry = seen[key] = Seen(program_of(proc.cmdline()))
                entry.cpu = max(entry.cpu, times.user + times.system)
        except psutil.Error:  # gone between listing and reading
            continue


def report(seen: dict[tuple[int, float], Seen], total: float, wall: float, top: int) -> str:
    per_program: dict[str, list[float]] = defaultdict(list)
    for entry in seen.values():
        per_program[entry.program].append(entry.cpu)
    rows = sorted(per_program.items(), key=lambda item: -sum(item[1]))

    def line(spent: float, processes: int | None, label: str) -> str:
        count = f"{processes:6d} {spent / processes:7.2f}" if processes else f"{'':6} {'':7}"
        return f"{spent:9.1f} {spent / total:6.1%} {count}  {label}"

    lines = [f"{'CPU s':>9} {'share':>6} {'procs':>6} {'s/proc':>7}  program"]
    lines += [line(sum(cpus), len(cpus), program) for program, cpus in rows[:top]]
    if rows[top:]:
        rest = [cpu for _, cpus in rows[top:] for cpu in cpus]
        lines.append(line(sum(rest), len(rest), f"({len(rows) - top} other programs)"))
    missed = max(total - sum(entry.cpu for entry in seen.values()), 0.0)
    lines.append(line(missed, None, "unattributed (short-lived, orphaned, or spent after a last sample)"))
    lines.append(f"total {total:.1f} CPU s in {wall:.1f} s wall: {total / wall:.2f} cores busy on average")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between samples (default 0.2)")
    parser.add_argument("--top", type=int, default=20, help="programs listed before the rest is summed")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    started = time.monotonic()
    proc = subprocess.Popen(command)
    root = psutil.Process(proc.pid)
    seen: dict[tuple[int, float], Seen] = {}
    try:
        while proc.poll() is None:
            sample(root, seen)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
    wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the whole tree, every reaped process in it
    table = report(seen, usage.ru_utime + usage.ru_stime, wall, args.top)
    print(table, file=sys.stderr)
    if args.out:
        args.out.write_text(table + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
