"""Compile a PyTorch MLP into a few numpy matmuls, so a one-row prediction costs microseconds, not a torch call.

The module is inspected, not assumed: its ``torch.fx`` graph (the GraphModule a ``pt2`` model loads as, or
``symbolic_trace`` of a pickled module) must be a single chain of supported operations: linear layers,
per-feature affine steps (``(x - mean) / std``, eval-mode batch norm), ReLU / LeakyReLU / tanh / sigmoid,
layer norm, and no-ops (eval-mode dropout, identity, clone). Affine steps are folded into the neighbouring
linear layer and ReLU is fused into it, so the trainer's normalised MLP becomes three ``x @ W + b`` steps.
Anything else raises :class:`Unsupported` and the server falls back to torch; the caller also checks that
the compiled chain reproduces torch's outputs before using it (:func:`matches`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

LINEAR, AFFINE, RELU, LEAKY, TANH, SIGMOID, LAYER_NORM = range(7)
Step = tuple[int, Any, Any, Any]  # (kind, a, b, c): the arrays or numbers each kind needs


class Unsupported(Exception):
    """The module is not a chain this compiler understands; the reason names the operation."""


def _array(value: Any) -> np.ndarray:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)


def _name(target: Any) -> str:
    """A call target's short name: ``aten.linear.default`` -> ``linear``, ``operator.truediv`` -> ``truediv``."""
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return str(packet.__name__).rstrip("_")
    return str(getattr(target, "__name__", target)).rstrip("_")


class _Builder:
    """Walks the fx graph in order, checking it is a chain, and collects steps."""

    def __init__(self, module: Any) -> None:
        import torch.fx

        if isinstance(module, torch.fx.GraphModule):
            self.graph_module = module
        else:
            try:
                self.graph_module = torch.fx.symbolic_trace(module)
            except Exception as exc:  # any tracing failure means "not a plain chain"
                raise Unsupported(f"torch.fx cannot trace {type(module).__name__}: {exc}") from exc
        self.steps: list[Step] = []
        self.constants: dict[Any, Any] = {}
        self.current: Any = None
        self.tuple_output = False

    def build(self) -> list[Step]:
        for node in self.graph_module.graph.nodes:
            if node.op == "placeholder":
                if self.current is not None:
                    raise Unsupported("the module takes more than one input")
                self.current = node
            elif node.op == "get_attr":
                self.constants[node] = self._attribute(node.target)
            elif node.op == "output":
                result = node.args[0]
                if isinstance(result, tuple | list) and len(result) == 1:
                    result = result[0]
                if result is not self.current:
                    raise Unsupported("the output is not the end of a single chain of operations")
            elif not node.users:
                continue  # nothing reads it (e.g. torch.export's input guards): it cannot change the output
            elif node.op in ("call_module", "call_function", "call_method"):
                self._call(node)
            else:
                raise Unsupported(f"unsupported graph node {node.op} {node.target}")
        if self.current is None:
            raise Unsupported("the module takes no input")
        return self.steps

    def _attribute(self, target: str) -> Any:
        value: Any = self.graph_module
        for part in target.split("."):
            value = getattr(value, part)
        return value

    def _value(self, arg: Any) -> Any:
        """A constant argument's value (tensor, number, tuple), or the chain marker for the chain input."""
        import torch.fx

        if isinstance(arg, torch.fx.Node):
            if arg is self.current:
                return _CHAIN
            if arg in self.constants:
                return self.constants[arg]
            raise Unsupported(f"operation reads {arg.name}, which is neither the chain nor a constant")
        if isinstance(arg, tuple | list):
            return type(arg)(self._value(a) for a in arg)
        return arg

    def _call(self, node: Any) -> None:
        args = [self._value(a) for a in node.args]
        kwargs = {k: self._value(v) for k, v in node.kwargs.items()}
        uses = sum(a is _CHAIN for a in args) + sum(v is _CHAIN for v in kwargs.values())
        if uses == 0:
            if node.op != "call_function":
                raise Unsupported(f"{node.op} {node.target} on constants only")
            self.constants[node] = node.target(*args, **kwargs)  # fold constant maths (e.g. a transpose)
            return
        live_users = [user for user in self.current.users if user.users or user.op == "output"]
        if uses > 1 or len(live_users) != 1:
            raise Unsupported(f"{node.name} is not one step of a single chain")
        if node.op == "call_module":
            self._module(self.graph_module.get_submodule(node.target), args, kwargs)
        else:
            aten = hasattr(node.target, "overloadpacket")
            name = (str(node.target) if node.op == "call_method" else _name(node.target)).rstrip("_")
            if name in ("add", "mul"):
                rest = [a for a in args if a is not _CHAIN]
            elif args and args[0] is _CHAIN:
                rest = args[1:]
            elif name in ("sub", "rsub") and len(args) == 2:  # constant - x, or rsub's x - constant
                name, rest = ("rsub" if name == "sub" else "sub"), args[:1]
            else:
                raise Unsupported(f"{node.target} does not take the chain as its first argument")
            self._function(name, aten, rest, kwargs, node.target)
        self.current = node

    def _module(self, module: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
        from torch import nn

        if args[1:] or kwargs:
            raise Unsupported(f"{type(module).__name__} called with extra arguments")
        if isinstance(module, nn.Linear):
            self._linear(module.weight, module.bias)
        elif isinstance(module, nn.ReLU):
            self.steps.append((RELU, None, None, None))
        elif isinstance(module, nn.LeakyReLU):
            self.steps.append((LEAKY, float(module.negative_slope), None, None))
        elif isinstance(module, nn.Tanh):
            self.steps.append((TANH, None, None, None))
        elif isinstance(module, nn.Sigmoid):
            self.steps.append((SIGMOID, None, None, None))
        elif isinstance(module, nn.Identity):
            pass
        elif isinstance(module, nn.Dropout | nn.AlphaDropout):
            if module.training:
                raise Unsupported("dropout in training mode")
        elif isinstance(module, nn.Flatten):
            if (module.start_dim, module.end_dim) != (1, -1):
                raise Unsupported("Flatten other than start_dim=1, end_dim=-1")
        elif isinstance(module, nn.BatchNorm1d):
            if module.training or module.running_mean is None or module.running_var is None:
                raise Unsupported("batch norm without running statistics or in training mode")
            self._batch_norm(module.weight, module.bias, module.running_mean, module.running_var, module.eps)
        elif isinstance(module, nn.LayerNorm):
            self._layer_norm(tuple(module.normalized_shape), module.weight, module.bias, module.eps)
        else:
            raise Unsupported(f"unsupported layer {type(module).__name__}")

    def _function(self, name: str, aten: bool, rest: list[Any], kwargs: dict[str, Any], target: Any) -> None:
        """One call on the chain; ``aten`` says the argument order is ATen's (torch.export graphs)."""
        returns_tuple = False
        if name in ("add", "sub", "rsub", "mul", "truediv", "div"):
            self._arith(name, rest, kwargs)
        elif name == "linear":
            weight = rest[0] if rest else kwargs.get("weight")
            bias = rest[1] if len(rest) > 1 else kwargs.get("bias")
            self._linear(weight, bias)
        elif name in ("relu", "tanh", "sigmoid") and not rest:
            self.steps.append(({"relu": RELU, "tanh": TANH, "sigmoid": SIGMOID}[name], None, None, None))
        elif name == "leaky_relu":
            slope = rest[0] if rest else kwargs.get("negative_slope", 0.01)
            self.steps.append((LEAKY, float(slope), None, None))
        elif name in ("dropout", "feature_dropout", "alpha_dropout"):
            training = rest[1] if len(rest) > 1 else kwargs.get("train" if aten else "training", not aten)
            if training:
                raise Unsupported("dropout in training mode")
        elif name in ("clone", "alias", "detach", "contiguous"):
            pass
        elif name == "flatten":  # a no-op on [rows, features] only when it keeps the row dimension
            start = rest[0] if rest else kwargs.get("start_dim", 0)
            end = rest[1] if len(rest) > 1 else kwargs.get("end_dim", -1)
            if (start, end) != (1, -1):
                raise Unsupported(f"flatten({start}, {end}) on [rows, features]")
        elif name in ("layer_norm", "native_layer_norm"):
            shape, weight, bias, eps = ([*rest, None, None, None, 1e-5])[:4]
            self._layer_norm(tuple(shape), weight, bias, float(kwargs.get("eps", eps)))
            returns_tuple = name == "native_layer_norm"
        elif aten and name == "_native_batch_norm_legit_no_training":  # (w, b, mean, var, momentum, eps)
            self._batch_norm(rest[0], rest[1], rest[2], rest[3], float(rest[5]))
            returns_tuple = True
        elif aten and name == "batch_norm":  # (w, b, mean, var, training, momentum, eps, cudnn)
            if rest[4]:
                raise Unsupported("batch norm in training mode")
            self._batch_norm(rest[0], rest[1], rest[2], rest[3], float(rest[6]))
        elif name == "getitem" and rest == [0] and self.tuple_output:
            pass  # element 0 of the (output, mean, rstd) tuple a normalisation returns in ATen graphs
        else:
            raise Unsupported(f"unsupported operation {target}")
        self.tuple_output = returns_tuple

    def _arith(self, name: str, rest: list[Any], kwargs: dict[str, Any]) -> None:
        if len(rest) != 1:
            raise Unsupported(f"{name} with {len(rest)} constant operands")
        constant = _array(rest[0])
        alpha = float(kwargs.pop("alpha", 1.0))
        if kwargs:
            raise Unsupported(f"{name} with arguments {sorted(kwargs)}")
        constant = _vector(constant)
        one = np.ones_like(constant)
        if name == "add":
            self._affine(one, alpha * constant)
        elif name == "sub":
            self._affine(one, -alpha * constant)
        elif name == "rsub":  # constant - alpha * x
            self._affine(-alpha * one, constant)
        elif name == "mul":
            self._affine(constant, np.zeros_like(constant))
        else:
            self._affine(1.0 / constant, np.zeros_like(constant))

    def _affine(self, scale: np.ndarray, shift: np.ndarray) -> None:
        self.steps.append((AFFINE, scale, shift, None))

    def _linear(self, weight: Any, bias: Any) -> None:
        if weight is None or _array(weight).ndim != 2:
            raise Unsupported("linear layer without a 2-D weight")
        w = _array(weight)
        b = _array(bias) if bias is not None else np.zeros(w.shape[0])
        self.steps.append((LINEAR, w.T.copy(), b, None))

    def _batch_norm(self, weight: Any, bias: Any, mean: Any, var: Any, eps: float) -> None:
        scale = 1.0 / np.sqrt(_array(var) + eps)
        if weight is not None:
            scale = scale * _array(weight)
        shift = -_array(mean) * scale
        if bias is not None:
            shift = shift + _array(bias)
        self._affine(scale, shift)

    def _layer_norm(self, shape: tuple[int, ...], weight: Any, bias: Any, eps: float) -> None:
        if len(shape) != 1:
            raise Unsupported("layer norm over more than the last dimension")
        w = _array(weight) if weight is not None else np.ones(shape[0])
        b = _array(bias) if bias is not None else np.zeros(shape[0])
        self.steps.append((LAYER_NORM, w, b, float(eps)))


_CHAIN = object()


def _vector(value: np.ndarray) -> np.ndarray:
    """A per-feature constant as a 1-D vector (a scalar stays 0-D); other shapes cannot be folded."""
    while value.ndim > 1 and value.shape[0] == 1:
        value = value[0]
    if value.ndim > 1:
        raise Unsupported(f"elementwise constant of shape {value.shape}: expected a scalar or one value per feature")
    return value


def _fold(steps: list[Step]) -> list[Step]:
    """Merge affine steps into each other and into the linear layer next to them; fuse ReLU into linear."""
    merged: list[Step] = []
    for step in steps:
        previous = merged[-1] if merged else None
        if step[0] == AFFINE and previous is not None and previous[0] == AFFINE:
            scale, shift = previous[1] * step[1], previous[2] * step[1] + step[2]
            merged[-1] = (AFFINE, scale, shift, None)
        elif step[0] == AFFINE and previous is not None and previous[0] == LINEAR and previous[3] is None:
            weight_t, bias = previous[1], previous[2]
            merged[-1] = (LINEAR, weight_t * step[1], bias * step[1] + step[2], None)
        elif step[0] == LINEAR and previous is not None and previous[0] == AFFINE:
            weight_t = step[1]
            scale = np.broadcast_to(previous[1], (weight_t.shape[0],))
            shift = np.broadcast_to(previous[2], (weight_t.shape[0],))
            merged[-1] = (LINEAR, weight_t * scale[:, None], shift @ weight_t + step[2], None)
        elif step[0] == RELU and previous is not None and previous[0] == LINEAR and previous[3] is None:
            merged[-1] = (LINEAR, previous[1], previous[2], RELU)
        else:
            merged.append(step)
    return [_as_float32(step) for step in merged]


def _as_float32(step: Step) -> Step:
    def cast(value: Any) -> Any:
        return np.ascontiguousarray(value, dtype=np.float32) if isinstance(value, np.ndarray) else value

    return (step[0], cast(step[1]), cast(step[2]), step[3])


class CompiledMLP:
    """The folded chain, run with float32 numpy; call it like the module: ``[N, n_features] -> [N, n_out]``."""

    def __init__(self, steps: list[Step]) -> None:
        if not any(step[0] == LINEAR for step in steps):
            raise Unsupported("no linear layer: nothing worth compiling")
        self.steps = steps
        first = steps[0][1]
        sized = isinstance(first, np.ndarray) and first.ndim >= 1
        self.n_features: int | None = int(first.shape[0]) if sized else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for kind, a, b, c in self.steps:
            if kind == LINEAR:
                x = x @ a
                x += b
                if c == RELU:
                    np.maximum(x, 0, out=x)
            elif kind == RELU:
                x = np.maximum(x, 0)
            elif kind == AFFINE:
                x = x * a + b
            elif kind == LEAKY:
                x = np.where(x > 0, x, x * a)
            elif kind == TANH:
                x = np.tanh(x)
            elif kind == SIGMOID:
                x = 1.0 / (1.0 + np.exp(-x))
            else:  # LAYER_NORM
                mean = x.mean(axis=1, keepdims=True)
                centred = x - mean
                var = (centred * centred).mean(axis=1, keepdims=True)
                x = centred / np.sqrt(var + c) * a + b
        return x if x.dtype == np.float32 else x.astype(np.float32)


def compile_module(module: Any) -> CompiledMLP:
    """The numpy version of ``module``; raises :class:`Unsupported` naming what is not a supported chain."""
    return CompiledMLP(_fold(_Builder(module).build()))


def matches(compiled: Callable[[np.ndarray], np.ndarray], reference: np.ndarray, x: np.ndarray) -> str | None:
    """``None`` when ``compiled(x)`` reproduces ``reference`` (torch's outputs), else what differs.

    Outputs must agree to float32 rounding (relative to the output scale) and give the same argmax wherever
    torch's top two outputs are not a near tie.
    """
    ours = compiled(x)
    if ours.shape != reference.shape:
        return f"output shape {ours.shape} differs from torch's {reference.shape}"
    scale = max(1.0, float(np.abs(reference).max()))
    worst = float(np.abs(ours - reference).max())
    if not worst <= 1e-4 * scale:
        return f"outputs differ from torch's by up to {worst:.3g} (scale {scale:.3g})"
    if reference.ndim == 2 and reference.shape[1] > 1:
        top2 = np.sort(reference, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 1e-3 * scale
        if not np.array_equal(ours.argmax(axis=1)[clear], reference.argmax(axis=1)[clear]):
            return "predicted classes differ from torch's"
    return None
