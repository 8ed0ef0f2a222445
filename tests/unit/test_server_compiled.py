"""The numpy compiler for MLPs: same outputs as torch for supported chains, a clear refusal for the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workloads.server.compiled import LINEAR, RELU, Unsupported, compile_module, matches
from workloads.trainer.model import MLPClassifier


def rows(n: int = 256, width: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(0, 16, size=(n, width)).astype(np.float32))


def trained_style_mlp() -> MLPClassifier:
    torch.manual_seed(0)
    model = MLPClassifier(64, 10, 32, dropout=0.2)
    model.set_normalisation(rows(500, seed=1))
    return model.eval()


def exported(module: nn.Module, x: torch.Tensor) -> nn.Module:
    """The GraphModule a ``pt2`` MLflow model loads as."""
    return torch.export.export(module, (x[:2],)).module()


@pytest.mark.parametrize("form", ["module", "torch.export"])
def test_the_trainers_mlp_compiles_to_three_fused_matmuls_with_torchs_outputs(form: str) -> None:
    model, x = trained_style_mlp(), rows()
    compiled = compile_module(model if form == "module" else exported(model, x))
    assert [(step[0], step[3]) for step in compiled.steps] == [(LINEAR, RELU), (LINEAR, RELU), (LINEAR, None)]
    assert compiled.n_features == 64
    with torch.no_grad():
        expected = model(x).numpy()
    assert matches(compiled, expected, x.numpy()) is None
    np.testing.assert_array_equal(compiled(x.numpy()).argmax(axis=1), expected.argmax(axis=1))


def batch_norm_stack() -> nn.Module:
    norm = nn.BatchNorm1d(64)
    assert norm.running_mean is not None and norm.running_var is not None
    norm.running_mean.uniform_(0, 8)
    norm.running_var.uniform_(1, 20)
    return nn.Sequential(norm, nn.Linear(64, 32), nn.Tanh(), nn.LayerNorm(32), nn.Linear(32, 5)).eval()


@pytest.mark.parametrize(
    "build",
    [
        batch_norm_stack,
        lambda: nn.Sequential(nn.Linear(64, 16), nn.LeakyReLU(0.2), nn.Identity(), nn.Linear(16, 3), nn.Sigmoid()),
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 4)).eval(),
    ],
    ids=["batchnorm-tanh-layernorm", "leaky-sigmoid", "flatten-dropout"],
)
@pytest.mark.parametrize("form", ["module", "torch.export"])
def test_other_linear_stacks_compile_and_match_torch(build, form: str) -> None:
    torch.manual_seed(1)
    model, x = build(), rows()
    with torch.no_grad():
        expected = model(x).numpy()
    compiled = compile_module(model if form == "module" else exported(model, x))
    assert matches(compiled, expected, x.numpy()) is None


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(64, 64)
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.inner(x))


class Softplus(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.layer(x))


@pytest.mark.parametrize(
    ("module", "says"),
    [
        (Residual(), "single chain"),
        (Softplus(), "unsupported operation"),
        (nn.Sequential(nn.Linear(64, 8), nn.Dropout(0.5)).train(), "training mode"),
        (nn.Sequential(nn.Conv1d(1, 1, 3)), "unsupported layer Conv1d"),
    ],
    ids=["residual", "softplus", "training-dropout", "conv"],
)
def test_modules_that_are_not_supported_chains_are_refused_with_the_reason(module: nn.Module, says: str) -> None:
    with pytest.raises(Unsupported, match=says):
        compile_module(module)


def test_matches_reports_different_outputs() -> None:
    model, x = trained_style_mlp(), rows()
    with torch.no_grad():
        expected = model(x).numpy()
    compiled = compile_module(model)
    assert "differ" in (matches(compiled, expected + 0.5, x.numpy()) or "")
    assert "shape" in (matches(compiled, expected[:, :5], x.numpy()) or "")
