"""A quality gate given as a YAML file (`--gate gate.yaml`): read like the block's form, mistakes named."""

from __future__ import annotations

from pathlib import Path

import pytest

from blocks.quality_gate import resolve_gate
from tasks.core.errors import ConfigurationError


def test_a_gate_file_declares_rules_and_custom_metrics(tmp_path: Path) -> None:
    path = tmp_path / "gate.yaml"
    path.write_text(
        "custom_metrics:\n  - {name: recall_a, function: 'm:recall', higher_is_better: true}\n"
        "rules:\n  - {metric: roc_auc, at_least: 0.97}\n"
    )
    gate = resolve_gate(str(path))
    assert [rule.metric for rule in gate.rules or []] == ["roc_auc"]
    assert gate.custom_metrics[0].function == "m:recall"


def test_a_missing_or_invalid_gate_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"quality gate file .*nope.yaml does not exist"):
        resolve_gate(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {metric: rmse}\n")
    with pytest.raises(ConfigurationError, match=r"quality gate file .*bad.yaml is not valid: rules.0: .*none of"):
        resolve_gate(str(bad))
