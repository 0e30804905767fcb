"""Discovery of prunable layers and their dense params and FLOPs.

Layers are found by ``isinstance``, so subclasses count too (timm's ``Linear``,
``Conv2dSame``, ...): every Linear, Conv1d/2d/3d (any ``groups``, dilation and padding
mode), ConvTranspose1d/2d/3d, Embedding, and the packed input projection of
``nn.MultiheadAttention`` (whose ``out_proj`` Linear is called through a functional op,
so it is found here too).

FLOPs are counted as multiply-accumulates (MACs) per sample, the convention of most
pruning papers (e.g. He et al. 2018, AMC): a Linear or Conv layer costs
``weight.numel() * positions``, where ``positions`` is the number of output positions
it is applied at (spatial positions of a conv, tokens of a Linear on ``(B, N, C)``
inputs, summed over calls when a layer is called more than once). A transposed conv
scatters every *input* position; an Embedding is a lookup (0 MACs).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.overrides import TorchFunctionMode

from searchprune.registry import SpecError

_BASE_FORWARDS = {
    nn.Linear.forward,
    nn.Conv1d.forward,
    nn.Conv2d.forward,
    nn.Conv3d.forward,
    nn.ConvTranspose1d.forward,
    nn.ConvTranspose2d.forward,
    nn.ConvTranspose3d.forward,
    nn.Embedding.forward,
}


class NoPrunableLayerError(SpecError):
    """The model has no layer that can be pruned."""


@dataclass(frozen=True)
class LayerInfo:
    """One weight layer: its shape, dense params and dense FLOPs (MACs per sample).

    ``param`` is the attribute of module ``name`` holding the weight (``weight``, or
    ``in_proj_weight`` for the packed projection of ``nn.MultiheadAttention``), ``bias``
    the attribute of its bias (or ``None``). ``prunable`` is False for layers kept
    dense (the output layer by default, and layers whose forward is not linear in their
    weight); they are still counted. ``reparameterized`` marks the latter (e.g. a
    weight-standardized conv): neither its weights nor its input channels can be removed.
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    has_bias: bool
    groups: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    positions: int
    prunable: bool
    order: int
    param: str = "weight"
    bias: str | None = "bias"
    reparameterized: bool = False

    @property
    def transposed(self) -> bool:
        """Whether the weight holds inputs on dim 0 (ConvTranspose) or is a lookup table
        (Embedding): rows of the weight are then not output channels."""
        return self.kind.startswith("conv_transpose") or self.kind == "embedding"

    @property
    def out_channels(self) -> int:
        if self.kind == "embedding":
            return self.weight_shape[1]
        if self.kind.startswith("conv_transpose"):
            return self.weight_shape[1] * self.groups
        return self.weight_shape[0]

    @property
    def in_channels(self) -> int:
        if self.kind == "embedding":
            return self.weight_shape[0]
        if self.kind.startswith("conv_transpose"):
            return self.weight_shape[0]
        return self.weight_shape[1] * self.groups

    @property
    def depthwise(self) -> bool:
        """A conv whose every output channel reads one input channel (``groups`` equal
        to the input channels): output channel ``i`` is input channel ``i``."""
        return (
            self.kind.startswith("conv")
            and not self.transposed
            and self.groups > 1
            and (self.weight_shape[1] == 1 and self.weight_shape[0] == self.groups)
        )

    @property
    def numel(self) -> int:
        return math.prod(self.weight_shape)

    @property
    def bias_numel(self) -> int:
        if not self.has_bias:
            return 0
        return self.out_channels

    @property
    def params(self) -> int:
        return self.numel + self.bias_numel

    @property
    def flops(self) -> int:
        return self.numel * self.positions

    def weight(self, model: nn.Module) -> Tensor:
        """This layer's weight tensor in ``model``."""
        tensor = getattr(model.get_submodule(self.name), self.param)
        assert isinstance(tensor, Tensor)
        return tensor


def layer_kind(module: nn.Module) -> str | None:
    """The kind of a weight layer (``linear``, ``conv2d``, ``conv_transpose2d``,
    ``embedding``, ...), or ``None`` for any other module."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, _ConvTransposeNd):
        return f"conv_transpose{len(module.kernel_size)}d"
    if isinstance(module, _ConvNd):
        return f"conv{len(module.kernel_size)}d"
    if isinstance(module, nn.Embedding):
        return "embedding"
    return None


_LAYER_CALLS = {
    F.linear: "linear",
    torch.conv1d: "conv",
    torch.conv2d: "conv",
    torch.conv3d: "conv",
    torch.conv_transpose1d: "conv_transpose",
    torch.conv_transpose2d: "conv_transpose",
    torch.conv_transpose3d: "conv_transpose",
    F.embedding: "embedding",
}
_MATMULS = {"matmul", "__matmul__", "__rmatmul__", "bmm", "baddbmm", "mm", "addmm"}


class CallRecorder(TorchFunctionMode):
    """Watches a forward pass at the level of torch functions: every call that passes a
    layer's own weight (``F.linear``, ``conv*``, ``F.embedding``, the projections of
    ``F.multi_head_attention_forward``), by the module's forward or functionally, with
    its output positions; and, in ``matmul_macs``, the MACs of the other products:
    between activations (attention), or with a weight that is no layer's (a blur filter
    buffer), outside the ``layers`` modules (whose own calls are theirs)."""

    def __init__(self, owner: dict[int, str], layers: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        self.owner = owner
        self.positions: dict[str, int] = {}
        self.order: list[str] = []
        self.matmul_macs = 0
        self.layers, self.inside = layers, 0
        self._handles: list[Any] = []

    def __enter__(self) -> CallRecorder:
        def enter(*_: object) -> None:
            self.inside += 1

        def leave(*_: object) -> None:
            self.inside -= 1

        for module in self.layers:
            self._handles += [
                module.register_forward_pre_hook(enter),
                module.register_forward_hook(leave),
            ]
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._record(func, args, kwargs, out)
        return out

    def _seen(self, weight: object, positions: int) -> None:
        name = self.owner.get(id(weight))
        if name is None:
            return
        if name not in self.positions:
            self.order.append(name)
            self.positions[name] = 0
        self.positions[name] += positions

    def _record(self, func: Any, args: tuple[Any, ...], kwargs: Any, out: Any) -> None:
        kind = _LAYER_CALLS.get(func)
        if kind is not None:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            if not isinstance(weight, Tensor):
                return
            scattered = kind == "conv_transpose"  # every input position is scattered
            positions = (args[0] if scattered else out).numel() // weight.shape[0]
            if kind == "embedding":
                positions = 0
            if id(weight) in self.owner:
                self._seen(weight, positions)
            elif not self.inside:
                self.matmul_macs += positions * weight.numel()
            return
        name = getattr(func, "__name__", "")
        if name == "multi_head_attention_forward":
            self._attention(args, kwargs, out)
        elif name in _MATMULS and isinstance(out, Tensor):
            operand = args[1] if name in ("baddbmm", "addmm") else args[0]
            self.matmul_macs += out.numel() * int(operand.shape[-1])
        elif name == "scaled_dot_product_attention" and isinstance(out, Tensor):
            keys = int(args[1].shape[-2])
            self.matmul_macs += keys * (args[0].numel() + out.numel())
        elif name == "einsum" and isinstance(args[0], str):
            operands = (
                args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
            )
            self.matmul_macs += _einsum_macs(
                args[0], [t for t in operands if isinstance(t, Tensor)]
            )

    def _attention(self, args: tuple[Any, ...], kwargs: Any, out: Any) -> None:
        names = [
            "query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight",
            "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "dropout_p",
            "out_proj_weight",
        ]  # fmt: skip
        given = dict(zip(names, args, strict=False)) | kwargs
        query, key = given["query"], given["key"]  # (L, N, E) or (L, E): tokens first
        embed = int(query.shape[-1])
        tokens = query.numel() // embed
        self._seen(given["in_proj_weight"], tokens)
        self._seen(given["out_proj_weight"], tokens)
        self.matmul_macs += 2 * tokens * int(key.shape[0]) * embed  # q k^T and attention v


def _einsum_macs(equation: str, operands: list[Tensor]) -> int:
    """MACs of an ``einsum`` of two or more operands: one per combination of the sizes of
    every index (each output element sums over the contracted ones); 0 for one operand."""
    if len(operands) < 2:
        return 0
    sizes: dict[str, int] = {}
    inputs = "".join(equation.split()).split("->")[0]  # (spaces are allowed)
    for labels, operand in zip(inputs.split(","), operands, strict=False):
        if "..." in labels:  # broadcast dims: as many as the operand has beyond the labels
            head, tail = labels.split("...")
            extra = operand.dim() - len(head) - len(tail)
            labels = head + "".join(chr(0x100 + i) for i in range(extra)) + tail
        for label, size in zip(labels, operand.shape, strict=False):
            sizes[label] = max(sizes.get(label, 1), int(size))
    return math.prod(sizes.values())


def _is_linear_in_weight(module: nn.Module, example: tuple[object, ...]) -> bool:
    """Whether a layer subclass with its own forward is linear in its parameters
    (``f(2W, 2b) = 2 f(W, b)``): a weight-standardized conv is not, and masking its
    weight does not remove what it seems to."""
    params = {
        name: 2 * p.detach()
        for name, p in module.named_parameters(recurse=False)
        if name in ("weight", "bias")
    }
    with torch.no_grad():
        base = module(*example)
        doubled = functional_call(module, params, example)
    if not isinstance(base, Tensor) or not isinstance(doubled, Tensor):
        return False
    scale = float(base.abs().max()) + 1e-12
    return bool(((doubled - 2 * base).abs().max() / scale) < 1e-3)


def _hook_positions(module: nn.Module, inputs: tuple[object, ...], output: object) -> int:
    """Output positions of a layer call seen by a forward hook (its weight did not reach
    a torch function as it is, e.g. a weight-standardized conv)."""
    kind = layer_kind(module) or ""
    weight = module.weight
    assert isinstance(weight, Tensor)
    if kind == "embedding":
        return 0
    if kind.startswith("conv_transpose"):
        first = inputs[0]
        assert isinstance(first, Tensor)
        return first.numel() // weight.shape[0]
    assert isinstance(output, Tensor)
    return output.numel() // weight.shape[0]


@contextmanager
def no_attention_fastpath() -> Iterator[None]:
    """Keep ``nn.TransformerEncoderLayer`` on its module-by-module path (its fused fast
    path calls no submodule, so neither hooks nor tracing would see its layers)."""
    backend = getattr(torch.backends, "mha", None)
    if backend is None:
        yield
        return
    before = backend.get_fastpath_enabled()
    backend.set_fastpath_enabled(False)
    try:
        yield
    finally:
        backend.set_fastpath_enabled(before)


def _owners(modules: dict[str, nn.Module], kinds: dict[str, str]) -> dict[int, str]:
    """The layer owning each weight tensor (by identity); a weight tied between several
    layers is left out (its calls are counted by forward hooks instead)."""
    owner: dict[int, str] = {}
    shared: set[int] = set()
    for name, module in modules.items():
        if name in kinds:
            attrs = ["weight"]
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            attrs = ["in_proj_weight"]
        else:
            continue
        for attr in attrs:
            tensor = getattr(module, attr, None)
            if isinstance(tensor, Tensor):
                if id(tensor) in owner:
                    shared.add(id(tensor))
                owner[id(tensor)] = name
    return {key: name for key, name in owner.items() if key not in shared}


@torch.no_grad()
def discover_layers(
    model: nn.Module,
    example_input: Tensor,
    *,
    exclude_output: bool = True,
    exclude: Sequence[str] = (),
) -> list[LayerInfo]:
    """Find every weight layer of ``model`` in the order it is first called.

    A forward pass on ``example_input`` (one sample, with its batch dim) records each
    layer's output positions (for FLOPs), whether the layer's module or any other code
    applies its weight. The last layer called is the output layer and is kept dense when
    ``exclude_output`` is true; layers named in ``exclude`` are kept dense too, and so
    are layers whose forward is not linear in their weight. Layers never called are left
    out. Modules of other types that own a weight matrix are skipped, with one warning
    naming their types.

    :raises NoPrunableLayerError: when no layer is left to prune.
    """
    modules = dict(model.named_modules())
    kinds = {name: kind for name, m in modules.items() if (kind := layer_kind(m)) is not None}
    attentions = {
        name: m
        for name, m in modules.items()
        if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None
    }
    known = set(kinds) | set(attentions)
    unknown = sorted(set(exclude) - known)
    if unknown:
        raise SpecError(
            f"space.exclude names {unknown}, which are not Linear/Conv layers of the model; "
            f"its layers are: {sorted(known)}"
        )
    recorder = CallRecorder(_owners(modules, kinds))
    hooked: dict[str, int] = {}
    hook_order: list[str] = []
    reparameterized: set[str] = set()
    checked: set[str] = set()
    checking: set[str] = set()

    def layer_hook(name: str):  # type: ignore[no-untyped-def]
        custom = type(modules[name]).forward not in _BASE_FORWARDS

        def hook(module: nn.Module, inputs: tuple[object, ...], output: object) -> None:
            if name in checking:  # the linearity check's own calls
                return
            if name not in hooked:
                hook_order.append(name)
                hooked[name] = 0
            hooked[name] += _hook_positions(module, inputs, output)
            if custom and name not in checked:
                checked.add(name)
                checking.add(name)
                with torch._C.DisableTorchFunction():
                    if not _is_linear_in_weight(module, inputs):
                        reparameterized.add(name)
                checking.discard(name)

        return hook

    handles = [modules[name].register_forward_hook(layer_hook(name)) for name in kinds]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with no_attention_fastpath(), recorder:
            model(example_input.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    positions = {**hooked, **recorder.positions}
    first_seen = {name: i for i, name in enumerate(reversed([*recorder.order, *hook_order]))}
    order = sorted(positions, key=lambda name: -first_seen[name])
    _warn_unknown_layers(modules, known)
    kept_dense = set(exclude) | reparameterized
    if exclude_output and order:
        kept_dense.add(order[-1])
    layers = []
    for index, name in enumerate(order):
        module = modules[name]
        if name in attentions:
            layers.append(
                _attention_layer(name, attentions[name], positions[name], index, kept_dense)
            )
            continue
        kind = kinds[name]
        conv = isinstance(module, _ConvNd)
        weight = module.weight
        assert isinstance(weight, Tensor)
        layers.append(
            LayerInfo(
                name=name,
                kind=kind,
                weight_shape=tuple(weight.shape),
                has_bias=isinstance(getattr(module, "bias", None), Tensor),
                groups=int(module.groups) if conv else 1,
                kernel_size=tuple(module.kernel_size) if conv else (),
                stride=tuple(module.stride) if conv else (),
                positions=positions[name],
                prunable=name not in kept_dense,
                order=index,
                reparameterized=name in reparameterized,
            )
        )
    if not any(layer.prunable for layer in layers):
        found = ", ".join(layer.name for layer in layers if not layer.reparameterized) or "none"
        standardized = (
            f"; {len(reparameterized)} more are kept dense because their output is not "
            "linear in their weight (weight standardization: masking would not remove "
            "their weights)"
            if reparameterized
            else ""
        )
        raise NoPrunableLayerError(
            f"model {type(model).__name__} has no prunable layer (Linear/Conv/Embedding "
            f"called in forward, other than the output layer); found: {found}{standardized}. "
            "Set space.exclude_output: false to allow pruning the output layer."
        )
    if reparameterized:
        warnings.warn(
            f"kept dense (their output is not linear in their weight, e.g. weight "
            f"standardization, so masking would not remove weights): {sorted(reparameterized)}",
            stacklevel=2,
        )
    return layers


def _attention_layer(
    name: str, module: nn.MultiheadAttention, positions: int, index: int, kept_dense: set[str]
) -> LayerInfo:
    weight = module.in_proj_weight
    assert weight is not None  # attentions with separate q/k/v projections are skipped
    return LayerInfo(
        name=name,
        kind="mha_in_proj",
        weight_shape=tuple(weight.shape),
        has_bias=module.in_proj_bias is not None,
        groups=1,
        kernel_size=(),
        stride=(),
        positions=positions,
        prunable=name not in kept_dense,
        order=index,
        param="in_proj_weight",
        bias="in_proj_bias",
    )


def _warn_unknown_layers(modules: dict[str, nn.Module], known: set[str]) -> None:
    """One warning naming module types that own a weight matrix but are not layers this
    module knows (their params are counted as constants, their FLOPs not at all)."""
    names = set()
    for name, module in modules.items():
        own = dict(module.named_parameters(recurse=False))
        if name in known or not any(p.dim() >= 2 for key, p in own.items() if "weight" in key):
            continue
        if not any(name.startswith(f"{layer}.") for layer in known):
            names.add(type(module).__name__)
    if names:
        warnings.warn(
            f"skipped layer types searchprune cannot prune (params counted as constants, "
            f"FLOPs not counted): {sorted(names)}",
            stacklevel=3,
        )
