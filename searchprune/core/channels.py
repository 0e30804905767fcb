"""Where a tensor's channels are: per-element arrays of channel nodes, and how
reshapes, permutes and slices move them (the bookkeeping of
:mod:`searchprune.core.graph`'s walk over a traced model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

UNOWNED = 0
"""The node of channels no layer produces (model inputs, unknown ops): never removable."""

NORM_TYPES = (_BatchNorm, _InstanceNorm)

MIXING_NORMS = tuple(
    getattr(nn, name)
    for name in ("LayerNorm", "GroupNorm", "LocalResponseNorm", "RMSNorm")
    if hasattr(nn, name)
)
"""Norms whose statistics mix channels: compact runs them on their input with the
removed channels put back as zeros (what the masked model normalized)."""
"""Per-channel norms whose channels follow the channel groups (masked and shrunk)."""

ZERO_CALLS = {
    "relu",
    "relu_",
    "relu6",
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "gelu",
    "silu",
    "mish",
    "hardswish",
    "hardtanh",
    "tanh",
    "softsign",
    "tanhshrink",
    "hardshrink",
    "softshrink",
    "sin",
    "erf",
    "sqrt",
    "square",
    "abs",
    "neg",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "contiguous",
    "clone",
    "detach",
    "float",
    "half",
    "double",
    "bfloat16",
    "to",
    "type",
    "type_as",
    "interpolate",
    "upsample",
    "stochastic_depth",
    "drop_path",
}
NONZERO_CALLS = {"sigmoid", "sigmoid_", "hardsigmoid", "softplus", "exp", "cos", "logsigmoid"}
POOL_CALLS = {
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "lp_pool1d",
    "lp_pool2d",
}
ADD = {"add", "add_", "iadd", "sub", "sub_", "isub", "rsub"}
MUL = {"mul", "mul_", "imul"}
DIV = {"truediv", "div", "div_", "itruediv"}
RESHAPES = {
    "view",
    "reshape",
    "flatten",
    "unflatten",
    "squeeze",
    "unsqueeze",
    "view_as",
    "reshape_as",
}
PERMUTES = {"permute", "transpose", "swapaxes", "movedim"}
SPLITS = {"split", "chunk", "tensor_split", "unbind", "split_with_sizes"}
REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min"}


@dataclass(frozen=True)
class Source:
    """The channel nodes of a tensor: ``nodes[...]`` is the node of each element of the
    tracked dims ``axes`` (ascending), ``zero[...]`` whether that element is exactly 0
    once its node's element is removed."""

    axes: tuple[int, ...]
    nodes: np.ndarray
    zero: np.ndarray


@dataclass(frozen=True)
class ParamVec:
    """A parameter (or buffer) holding one value per channel: ``length`` values along
    dim ``dim`` of a tensor of ``ndim`` dims (other dims of size 1 or broadcast).
    ``fixed`` when the code reshapes it to a size written in it (it cannot be sliced)."""

    name: str
    length: int
    dim: int
    ndim: int
    fixed: bool = False


Value = Source | ParamVec | tuple[Any, ...] | None


def name_of(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, str):
        return target.split(".")[-1] if node.op == "get_attr" else target
    name = getattr(target, "__name__", str(target))
    return name.removeprefix("__").removesuffix("__")


def shape_of(node: object) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def drop_constant_dims(axes: list[int], nodes: np.ndarray, zero: np.ndarray, size: int) -> Source:
    """A source without the tracked dims along which nothing varies (broadcast copies of
    a channel, such as the spatial dims after a view of a flattened tensor). When
    nothing varies at all (a single channel), one dim stays: one of the channel's own
    ``size``, else the largest."""
    varying = [
        k
        for k in range(nodes.ndim)
        if nodes.shape[k] > 1
        and (
            not np.array_equal(nodes, np.broadcast_to(np.take(nodes, [0], axis=k), nodes.shape))
            or not np.array_equal(zero, np.broadcast_to(np.take(zero, [0], axis=k), zero.shape))
        )
    ]
    if not varying and nodes.ndim:
        same = [k for k in range(nodes.ndim) if nodes.shape[k] == size]
        varying = [same[0] if same else int(np.argmax(nodes.shape))]
    for k in range(nodes.ndim - 1, -1, -1):
        if k not in varying:
            nodes, zero = np.take(nodes, 0, axis=k), np.take(zero, 0, axis=k)
    return Source(tuple(axes[k] for k in varying), nodes, zero)


def reshape_blocks(
    in_shape: Sequence[int], out_shape: Sequence[int]
) -> list[tuple[list[int], list[int]]]:
    """Pair up runs of input and output dims whose sizes multiply to the same number:
    a reshape moves elements only within such runs."""
    blocks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(in_shape) or j < len(out_shape):
        dims_in, dims_out, size_in, size_out = [], [], 1, 1
        if i < len(in_shape):
            size_in, i = in_shape[i], i + 1
            dims_in.append(i - 1)
        if j < len(out_shape):
            size_out, j = out_shape[j], j + 1
            dims_out.append(j - 1)
        while size_in != size_out:
            if size_in < size_out and i < len(in_shape):
                size_in, i = size_in * in_shape[i], i + 1
                dims_in.append(i - 1)
            elif size_out < size_in and j < len(out_shape):
                size_out, j = size_out * out_shape[j], j + 1
                dims_out.append(j - 1)
            else:
                break
        blocks.append((dims_in, dims_out))
    return blocks


def reshape_source(
    source: Source, in_shape: Sequence[int], out_shape: Sequence[int]
) -> Source | None:
    """Where ``source``'s channels are after reshaping a tensor from ``in_shape`` to
    ``out_shape`` (``None`` when the shapes do not line up)."""
    if math.prod(in_shape) != math.prod(out_shape):
        return None
    touched = [b for b in reshape_blocks(in_shape, out_shape) if set(b[0]) & set(source.axes)]
    dims_in = [d for b in touched for d in b[0]]
    dims_out = [d for b in touched for d in b[1]]
    if set(source.axes) - set(dims_in):
        return None
    # spread the tracked arrays over every dim of the touched blocks, then reshape
    view = [in_shape[d] if d in source.axes else 1 for d in dims_in]
    full_shape = [in_shape[d] for d in dims_in]
    sizes = [out_shape[d] for d in dims_out]
    nodes = np.broadcast_to(source.nodes.reshape(view), full_shape).reshape(sizes)
    zero = np.broadcast_to(source.zero.reshape(view), full_shape).reshape(sizes)
    return drop_constant_dims(dims_out, nodes, zero, source.nodes.size)


def normalize_dims(dims: object, ndim: int) -> list[int] | None:
    if dims is None:
        return list(range(ndim))
    if isinstance(dims, int):
        return [dims % ndim]
    if isinstance(dims, (list, tuple)) and all(isinstance(d, int) for d in dims):
        return sorted(d % ndim for d in dims)
    return None


def fixed_positions(item: object, size: int) -> np.ndarray:
    """Positions along a channel dim that indexing by ``item`` (an int or a slice with
    constant bounds) pins: the compact model indexes its smaller tensor with the same
    numbers, so every channel before a bound counted from the start (after one counted
    from the end) must stay."""
    fixed = np.zeros(size, dtype=bool)
    if isinstance(item, slice):
        if item.step not in (None, 1):
            fixed[:] = True
            return fixed
        bounds = [b for b in (item.start, item.stop) if isinstance(b, int)]
    elif isinstance(item, int):
        bounds = [item + 1] if item >= 0 else [item]
    else:
        return fixed
    for bound in bounds:  # a bound past the end stays past it in a smaller tensor
        if 0 <= bound < size:
            fixed[:bound] = True
        elif -size < bound < 0:
            fixed[size + bound :] = True
    return fixed


def integer(value: object) -> int:
    """``value`` as an int; :raises TypeError: for anything else (a computed value)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"expected an int, got {value!r}")


def arg(node: fx.Node, position: int, name: str, default: Any = None) -> Any:
    """An argument of a call node, given by position or by keyword."""
    return node.args[position] if len(node.args) > position else node.kwargs.get(name, default)


def size_args(node: fx.Node, name: str, ndim: int) -> list[Any]:
    """The size arguments of a view/reshape/expand, one per output dim (empty when they
    are not given one by one)."""
    if name not in ("view", "reshape", "expand"):
        return []
    sizes: list[Any] = list(node.args[1:])
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = list(sizes[0])
    if not sizes:
        sizes = list(node.kwargs.get("shape", node.kwargs.get("size", [])))  # type: ignore[arg-type]
    return sizes if len(sizes) == ndim else []


def size_origin(value: object) -> tuple[fx.Node, int] | None:
    """The (tensor, dim) whose size a size argument is (``x.shape[1]``, ``x.size(1)``)."""
    if not isinstance(value, fx.Node):
        return None
    name = name_of(value)
    if name == "size" and len(value.args) == 2 and isinstance(value.args[1], int):
        base = value.args[0]
        return (base, value.args[1]) if isinstance(base, fx.Node) else None
    if name != "getitem" or not isinstance(value.args[1], int):
        return None
    base = value.args[0]
    if not isinstance(base, fx.Node):
        return None
    if (name_of(base) == "getattr" and base.args[1] == "shape") or (
        name_of(base) == "size" and len(base.args) == 1
    ):
        tensor = base.args[0]
        return (tensor, value.args[1]) if isinstance(tensor, fx.Node) else None
    return None


def sized_tensors(value: object) -> set[fx.Node]:
    """The tensors whose sizes a size expression reads (``C // groups``)."""
    found: set[fx.Node] = set()
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, (list, tuple)):
            todo.extend(item)
        if not isinstance(item, fx.Node):
            continue
        if name_of(item) in ("getattr", "size") and item.args:
            first = item.args[0]
            if isinstance(first, fx.Node) and shape_of(first) is not None:
                found.add(first)
                continue
        todo.extend(item.args)
    return found


def fixed_sizes(node: fx.Node, name: str, ndim: int) -> dict[int, int]:
    """Output dims of a view/reshape/expand whose size is a constant in the code (not
    ``-1`` and not computed from a tensor's shape), with that size."""
    if name in ("view", "reshape", "expand"):
        sizes = size_args(node, name, ndim)
        return {
            d: size for d, size in enumerate(sizes) if isinstance(size, int) and size not in (-1, 1)
        }
    if name == "unflatten":
        dim, pieces = arg(node, 1, "dim"), arg(node, 2, "sizes")
        if not isinstance(dim, int) or not isinstance(pieces, (list, tuple)):
            return {}
        sizes = list(pieces)
        start = dim % (ndim - len(sizes) + 1)
        return {
            start + k: size
            for k, size in enumerate(sizes)
            if isinstance(size, int) and size not in (-1, 1)
        }
    return {}
