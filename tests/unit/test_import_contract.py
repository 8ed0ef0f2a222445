"""The layering of docs/architecture.md, checked: the contracts in .importlinter, run by import-linter.

A broken contract fails here with import-linter's report, which names each offending import chain with its
file and line; the second test proves that by adding one forbidden import to the graph.
"""

from __future__ import annotations

import os

import grimp
import pytest
from importlinter.cli import lint_imports

from deployments import PROJECT_ROOT

CONFIG = PROJECT_ROOT / ".importlinter"


@pytest.fixture()
def in_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PROJECT_ROOT)
    monkeypatch.syspath_prepend(os.fspath(PROJECT_ROOT))


def test_every_import_contract_is_kept(in_project: None, capsys: pytest.CaptureFixture[str]) -> None:
    code = lint_imports(config_filename=str(CONFIG), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert code == 0, report
    assert "0 broken" in report


def test_a_broken_layer_fails_naming_the_offending_import(
    in_project: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_build_graph = grimp.build_graph

    def graph_with_a_workload_importing_tasks(*args: object, **kwargs: object) -> grimp.ImportGraph:
        graph = real_build_graph(*args, **kwargs)  # type: ignore[arg-type]
        graph.add_import(
            importer="workloads.store",
            imported="tasks.core.errors",
            line_number=7,
            line_contents="from tasks.core.errors import ConfigurationError",
        )
        return graph

    monkeypatch.setattr(grimp, "build_graph", graph_with_a_workload_importing_tasks)
    code = lint_imports(config_filename=str(CONFIG), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert code != 0
    assert "workloads.store -> tasks.core.errors (l.7)" in report
    assert "workloads import nothing of gpuflow's other packages" in report
