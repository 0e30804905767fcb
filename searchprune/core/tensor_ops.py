"""The rules for tensor operations of the walk over a traced model: how elementwise
ops, reshapes, permutes, slices, splits, concatenations, reductions and products move,
tie or freeze channel nodes (:mod:`searchprune.core.graph`)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from torch import fx, nn

from searchprune.core.channels import (
    ADD,
    DIV,
    RESHAPES,
    UNOWNED,
    ParamVec,
    Source,
    Value,
    arg,
    fixed_positions,
    fixed_sizes,
    integer,
    normalize_dims,
    reshape_source,
    shape_of,
    size_args,
    size_origin,
    sized_tensors,
)

PATCHABLE = ("num_heads", "attn_dim")
"""Attributes of an attention module (timm's ``Attention`` and alike) its code reshapes
to, and which compact updates when heads are removed."""


class TensorOps:
    """Channel nodes and their ties, and the rules of tensor operations. ``patches`` are
    module attributes compact sets to the number of elements kept along a dim."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.patches: list[tuple[str, str, np.ndarray]] = []
        self.list_patches: list[tuple[str, str, list[np.ndarray]]] = []
        self.products: list[tuple[np.ndarray, int]] = []  # (nodes, MACs per node)
        self.count = 1  # node 0 is UNOWNED
        self.edges: list[tuple[np.ndarray, np.ndarray]] = []
        self.frozen: list[tuple[np.ndarray, str]] = [(np.array([UNOWNED]), "")]
        self.params: dict[str, np.ndarray] = {}

    def new_nodes(self, count: int) -> np.ndarray:
        nodes = np.arange(self.count, self.count + count, dtype=np.int64)
        self.count += count
        return nodes

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.broadcast_arrays(a, b)
        different = a != b
        if different.any():
            self.edges.append((a[different].ravel(), b[different].ravel()))

    def freeze(self, value: Value, reason: str) -> None:
        if isinstance(value, Source):
            self.frozen.append((value.nodes.ravel(), reason))
        elif isinstance(value, tuple):
            for item in value:
                self.freeze(item, reason)

    def freeze_nodes(self, nodes: np.ndarray, reason: str) -> None:
        if nodes.size:
            self.frozen.append((nodes.ravel(), reason))

    def attach(self, name: str, nodes: np.ndarray) -> None:
        if name in self.params and self.params[name].shape == nodes.shape:
            self.union(self.params[name], nodes)
        elif name in self.params:
            self.freeze_nodes(self.params[name], f"parameter {name} used along other channels")
            self.freeze_nodes(nodes, f"parameter {name} used along other channels")
        else:
            self.params[name] = nodes

    # ----------------------------------------------------------------- walk

    def value(self, arg: object, env: dict[fx.Node, Value]) -> Value:
        return env.get(arg) if isinstance(arg, fx.Node) else None

    def tensor_values(self, node: fx.Node, env: dict[fx.Node, Value]) -> list[Value]:
        values: list[Value] = []

        def collect(arg: object) -> None:
            if isinstance(arg, (list, tuple)):
                for item in arg:
                    collect(item)
            elif isinstance(arg, dict):
                for item in arg.values():
                    collect(item)
            elif isinstance(arg, fx.Node):
                values.append(env.get(arg))

        collect(node.args)
        collect(node.kwargs)
        return values

    def give_up(self, node: fx.Node, env: dict[fx.Node, Value], reason: str) -> None:
        for value in self.tensor_values(node, env):
            self.freeze(value, reason)

    def check_zero(self, source: Source, reader: str) -> None:
        if not source.zero.all():
            self.freeze_nodes(
                source.nodes[~source.zero],
                f"reaches {reader} through an operation that maps a removed channel's 0 to "
                "a nonzero value",
            )

    def mixed(self, source: Value, dims: set[int], reason: str) -> Value:
        """A norm whose statistics mix ``dims``: their channels stay, unless another channel
        dim holds them (an attention head's q/k norm): then they leave with it, whole."""
        if not isinstance(source, Source):
            return None
        normalized = [a for a in source.axes if a in dims]
        if normalized and len(normalized) == len(source.axes):
            self.freeze(source, f"{reason}, whose statistics mix channels")
        for axis in normalized if len(normalized) < len(source.axes) else []:
            along = np.moveaxis(source.nodes, source.axes.index(axis), 0)
            self.union(along[:1], along[1:])
        return Source(source.axes, source.nodes, np.zeros(source.nodes.shape, dtype=bool))

    def elementwise(
        self,
        source: Value,
        in_shape: tuple[int, ...] | None,
        out_shape: tuple[int, ...] | None,
        *,
        zero: bool,
    ) -> Value:
        """An op acting on each element alone (the tracked dims keep their sizes)."""
        if not isinstance(source, Source):
            return None
        if (
            in_shape is None
            or out_shape is None
            or len(in_shape) != len(out_shape)
            or any(in_shape[a] != out_shape[a] for a in source.axes)
        ):
            self.freeze(source, "resized by an elementwise op")
            return None
        return source if zero else Source(source.axes, source.nodes, np.zeros_like(source.zero))

    def pool(
        self,
        source: Value,
        in_shape: tuple[int, ...] | None,
        out_shape: tuple[int, ...] | None,
        spatial: int,
        name: str,
    ) -> Value:
        if not isinstance(source, Source) or in_shape is None:
            return None
        pooled = set(range(len(in_shape) - spatial, len(in_shape)))
        if pooled & set(source.axes):
            self.freeze(source, f"pooled across channels by {name}")
            return None
        return self.elementwise(source, in_shape, out_shape, zero=True)

    def softmax(
        self, source: Value, in_shape: tuple[int, ...] | None, dim: object, name: str
    ) -> Value:
        if not isinstance(source, Source) or in_shape is None:
            return None
        dims = normalize_dims(dim, len(in_shape))
        if dims is None or set(dims) & set(source.axes):
            self.freeze(source, f"mixed across channels by {name}")
            return None
        return Source(source.axes, source.nodes, np.zeros_like(source.zero))

    def clamp(
        self,
        node: fx.Node,
        source: Value,
        in_shape: tuple[int, ...] | None,
        out_shape: tuple[int, ...] | None,
    ) -> Value:
        low = node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None)
        high = node.kwargs.get("max", node.args[2] if len(node.args) > 2 else None)
        zero = (low is None or (isinstance(low, (int, float)) and low <= 0)) and (
            high is None or (isinstance(high, (int, float)) and high >= 0)
        )
        return self.elementwise(source, in_shape, out_shape, zero=zero)

    def pad(
        self,
        node: fx.Node,
        source: Value,
        in_shape: tuple[int, ...] | None,
        out_shape: tuple[int, ...] | None,
    ) -> Value:
        if not isinstance(source, Source) or in_shape is None or out_shape is None:
            return None
        widths = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0.0)
        padded = set(range(len(in_shape)))
        if isinstance(widths, (list, tuple)):  # (left, right) pairs from the last dim back
            pairs = [widths[i : i + 2] for i in range(0, len(widths), 2)]
            padded = {
                len(in_shape) - 1 - k for k, pair in enumerate(pairs) if tuple(pair) != (0, 0)
            }
        return self.along_other_dims(
            source, in_shape, out_shape, sorted(padded), "pad", zero=value in (0, 0.0, None)
        )

    def along_other_dims(
        self,
        source: Value,
        in_shape: tuple[int, ...] | None,
        out_shape: tuple[int, ...] | None,
        dims: object,
        name: str,
        *,
        zero: bool,
    ) -> Value:
        if not isinstance(source, Source) or in_shape is None:
            return None
        touched = normalize_dims(dims, len(in_shape))
        if touched is None or set(touched) & set(source.axes):
            self.freeze(source, f"moved across channels by {name}")
            return None
        return self.elementwise(source, in_shape, out_shape, zero=zero)

    def reshape(
        self,
        node: fx.Node,
        source: Value,
        in_shape: tuple[int, ...] | None,
        out_shape: tuple[int, ...] | None,
        name: str,
        fixed: dict[int, int] | None = None,
        env: dict[fx.Node, Value] | None = None,
    ) -> Value:
        if not isinstance(source, Source):
            # a tensor whose channels are not followed, sized by one whose channels are:
            # those cannot shrink
            for size in size_args(node, name, len(out_shape or ())):
                origin = size_origin(size)
                other = self.value(origin[0], env or {}) if origin else None
                if origin and isinstance(other, Source):
                    dim = origin[1] % len(shape_of(origin[0]) or (0,))
                    if dim in other.axes:
                        self.freeze(other, f"its width sizes a reshape by {name} not followed")
            return None
        if in_shape is None or out_shape is None:
            self.freeze(source, f"reshaped by {name}")
            return None
        if name in ("expand", "expand_as"):
            offset = len(out_shape) - len(in_shape)
            result: Source | None = Source(
                tuple(a + offset for a in source.axes), source.nodes, source.zero
            )
        else:
            result = reshape_source(source, in_shape, out_shape)
        if result is None:
            self.freeze(source, f"reshaped by {name} from {list(in_shape)} to {list(out_shape)}")
            return None
        if fixed is None:
            fixed = fixed_sizes(node, name, len(out_shape))
        # the compact model runs the same code: a size written in it cannot shrink, unless
        # it is an attention module's head count that compact updates; nor can one read
        # from another tensor, unless that tensor's channels are tied to these
        pinned = [
            a
            for a in result.axes
            if a in fixed or self.foreign_size(node, name, result, a, env or {})
        ]
        fixed = {**fixed, **{a: -2 for a in pinned if a not in fixed}}
        patched = self.patchable(node, {a: fixed[a] for a in pinned})
        pinned = [a for a in pinned if a not in patched]
        if pinned and len(pinned) == len(result.axes):
            self.freeze(source, f"reshaped by {name} to a size fixed in the model's code")
            return result
        # channels leave along the other dims only: tie them across these (across all but
        # a head dim, so that each head is one element)
        tied = [a for a in result.axes if a not in patched] if patched else pinned
        for axis in tied:
            along = np.moveaxis(result.nodes, result.axes.index(axis), 0)
            self.union(along[:1], along[1:])
        for axis, (owner, attr) in patched.items():
            along = np.moveaxis(result.nodes, result.axes.index(axis), 0)
            self.patches.append((owner, attr, along.reshape(len(along), -1)[:, 0]))
        return result

    def foreign_size(
        self, node: fx.Node, name: str, result: Source, axis: int, env: dict[fx.Node, Value]
    ) -> bool:
        """Whether output dim ``axis`` of a reshape gets a size computed from another
        tensor's shape, which does not follow this tensor's channels: true unless it is
        one of that tensor's channel dims, whose channels are then tied to these."""
        sizes = size_args(node, name, len(shape_of(node) or ()))
        if not sizes or not isinstance(sizes[axis], fx.Node):
            return False
        origin = size_origin(sizes[axis])
        own = node.args[0]
        if origin is None:
            return not sized_tensors(sizes[axis]) <= {own}
        tensor, dim = origin
        if tensor is own:
            return False
        other = self.value(tensor, env)
        length = result.nodes.shape[result.axes.index(axis)]
        if not isinstance(other, Source) or other.axes != (dim % len(shape_of(tensor) or (0,)),):
            return True
        if other.nodes.shape != (length,):
            return True
        along = np.moveaxis(result.nodes, result.axes.index(axis), 0)
        self.union(other.nodes.reshape(length, *([1] * (along.ndim - 1))), along)
        return False

    def patchable(self, node: fx.Node, sizes: dict[int, int]) -> dict[int, tuple[str, str]]:
        """Which of the constant ``sizes`` (by output dim) of a reshape in an attention
        module's code are that module's head count or width (:data:`PATCHABLE`), which
        compact sets to what is kept."""
        stack = node.meta.get("nn_module_stack") or {}
        if not sizes:
            return {}
        owner = list(stack.values())[-1][0] if stack else ""  # "": the model's own code
        module = self.modules.get(owner)
        shape = shape_of(node) or ()
        head_dim = getattr(module, "head_dim", None)
        found: dict[int, tuple[str, str]] = {}
        for attr in PATCHABLE:
            value = getattr(module, attr, None)
            dims = [d for d, size in sorted(sizes.items()) if size == value and d not in found]
            # (3, heads, head_dim) with 3 heads: the head dim is the one before head_dim
            before = [d for d in dims if d + 1 < len(shape) and shape[d + 1] == head_dim]
            if isinstance(value, int) and dims:
                found[(before or dims)[-1]] = (owner, attr)
        return found

    def permute(
        self,
        node: fx.Node,
        name: str,
        source: Value,
        in_shape: tuple[int, ...] | None,
        out_shape: tuple[int, ...] | None,
    ) -> Value:
        if not isinstance(source, Source) or in_shape is None:
            return None
        ndim = len(in_shape)
        rest: list[Any] = list(node.args[1:])
        order = list(range(ndim))
        if name == "permute":
            dims = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
            if not dims:
                dims = list(node.kwargs.get("dims", []))  # type: ignore[arg-type]
            order = [integer(d) % ndim for d in dims]
        elif name in ("transpose", "swapaxes"):
            a = integer(rest[0] if rest else node.kwargs["dim0"]) % ndim
            b = integer(rest[1] if len(rest) > 1 else node.kwargs["dim1"]) % ndim
            order[a], order[b] = order[b], order[a]
        else:  # movedim
            src = normalize_dims(rest[0], ndim)
            dst = normalize_dims(rest[1], ndim)
            if src is None or dst is None:
                self.freeze(source, f"moved by {name}")
                return None
            moved = [d for d in range(ndim) if d not in src]
            order = [-1] * ndim
            for s, d in zip(src, dst, strict=True):
                order[d] = s
            fill = iter(moved)
            order = [o if o >= 0 else next(fill) for o in order]
        where = {old: new for new, old in enumerate(order)}
        new_axes = [where[a] for a in source.axes]
        ranking = np.argsort(new_axes)
        return Source(
            tuple(sorted(new_axes)),
            np.transpose(source.nodes, ranking),
            np.transpose(source.zero, ranking),
        )

    def getitem(self, node: fx.Node, env: dict[fx.Node, Value]) -> Value:
        container = self.value(node.args[0], env)
        index = node.args[1]
        if isinstance(container, tuple):
            return container[index] if isinstance(index, int) and index < len(container) else None
        in_shape = shape_of(node.args[0])
        if not isinstance(container, Source) or in_shape is None:
            return None
        items = list(index) if isinstance(index, tuple) else [index]
        if any(isinstance(i, (fx.Node, list)) for i in items):
            self.freeze(container, "indexed by a tensor")
            return None
        if Ellipsis in items:
            at = items.index(Ellipsis)
            fill = len(in_shape) - (len(items) - 1 - items.count(None))
            items = items[:at] + [slice(None)] * fill + items[at + 1 :]
        real = [i for i in items if i is not None]  # one per input dim
        if any(
            isinstance(i, slice)
            and any(isinstance(b, fx.Node) for b in (i.start, i.stop))
            and dim in container.axes
            for dim, i in enumerate(real)
        ):  # bounds computed from shapes: where they fall in the compact model is unknown
            self.freeze(container, "sliced along channels by computed bounds")
            return None
        nodes, zero = container.nodes, container.zero
        axes: list[int] = []
        position = {a: k for k, a in enumerate(container.axes)}
        dim_in = dim_out = 0
        taken: list[tuple[int, object]] = []
        for item in items:
            if item is None:
                dim_out += 1
                continue
            if dim_in in position:
                taken.append((position[dim_in], item))
                if isinstance(item, slice):
                    axes.append(dim_out)
            if isinstance(item, slice):
                dim_out += 1
            dim_in += 1
        for a in container.axes:
            if a >= dim_in:
                axes.append(dim_out + a - dim_in)
        for k, item in taken:
            fixed = fixed_positions(item, nodes.shape[k])
            if fixed.any():  # the compact model indexes with the same numbers
                self.freeze_nodes(
                    np.moveaxis(nodes, k, 0)[fixed], "indexed by positions fixed in the code"
                )
        for k, item in sorted(taken, key=lambda pair: -pair[0]):
            selector = [slice(None)] * nodes.ndim
            selector[k] = item  # type: ignore[call-overload]
            nodes, zero = nodes[tuple(selector)], zero[tuple(selector)]
        if not axes:
            return None
        return Source(tuple(sorted(axes)), nodes, zero)

    def split(
        self,
        node: fx.Node,
        name: str,
        source: Value,
        in_shape: tuple[int, ...] | None,
        env: dict[fx.Node, Value],
    ) -> Value:
        meta = node.meta.get("tensor_meta")
        if not isinstance(meta, (tuple, list)) or in_shape is None:
            self.freeze(source, f"split by {name}")
            return None
        shapes = [tuple(m.shape) for m in meta]
        if not isinstance(source, Source):
            return tuple(None for _ in shapes)
        dim = node.kwargs.get("dim", None)
        if dim is None:
            default = 0
            position = 1 if name == "unbind" else 2
            dim = node.args[position] if len(node.args) > position else default
        dim = integer(dim) % len(in_shape)
        if name == "unbind":
            pieces = [(i, i + 1) for i in range(in_shape[dim])]
        else:
            sizes = [s[dim] for s in shapes]
            edges = np.concatenate([[0], np.cumsum(sizes)])
            pieces = list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))
            if dim in source.axes:
                by_size = name == "split" and isinstance(
                    arg(node, 1, "split_size_or_sections"), int
                )
                self.split_sizes(node, source, dim, "split(size)" if by_size else name, sizes)
        results: list[Value] = []
        for (start, stop), shape in zip(pieces, shapes, strict=True):
            if dim in source.axes:
                k = source.axes.index(dim)
                selector: list[slice | int] = [slice(None)] * source.nodes.ndim
                selector[k] = slice(start, stop) if name != "unbind" else start
                nodes, zero = source.nodes[tuple(selector)], source.zero[tuple(selector)]
                axes = list(source.axes)
                if name == "unbind":
                    axes = [a - (a > dim) for a in axes if a != dim]
                results.append(Source(tuple(axes), nodes, zero) if axes else None)
            else:
                axes = [a - (name == "unbind" and a > dim) for a in source.axes]
                results.append(Source(tuple(axes), source.nodes, source.zero))
            del shape
        return tuple(results)

    def split_sizes(
        self, node: fx.Node, source: Source, dim: int, name: str, sizes: list[int]
    ) -> None:
        """The compact model splits its smaller tensor the same way: ``chunk`` into equal
        pieces (so every piece must lose as many channels: the ``i``-th channels of the
        pieces are tied), ``split`` into sizes fixed in the code (which cannot shrink),
        unless they are a list attribute of the module that splits (MixNet's mixed
        convs), which compact sets to what each piece keeps."""
        k = source.axes.index(dim)
        along = np.moveaxis(source.nodes, k, 0)
        stack = node.meta.get("nn_module_stack") or {}
        owner = list(stack.values())[-1][0] if stack else ""
        module = self.modules.get(owner)
        listed = (
            [
                attr
                for attr, value in vars(module).items()
                if isinstance(value, (list, tuple)) and list(value) == sizes and len(sizes) > 1
            ]
            if module is not None and name == "split"
            else []
        )
        if listed:
            edges = np.cumsum([0, *sizes])
            spots = [along[a:b].reshape(b - a, -1)[:, 0] for a, b in itertools.pairwise(edges)]
            self.list_patches.append((owner, listed[0], spots))
            return
        if name in ("chunk", "tensor_split") and len(set(sizes)) == 1:
            pieces = along.reshape(len(sizes), sizes[0], -1)
            self.union(pieces[:1], pieces[1:])
        elif name == "split(size)":  # pieces of one size written in the code, but the last
            self.freeze_nodes(along[: sum(sizes[:-1])], f"split by {name} into fixed sizes")
        else:
            self.freeze(source, f"split by {name} into sizes fixed in the model's code")

    def concat(
        self, node: fx.Node, name: str, env: dict[fx.Node, Value], out_shape: tuple[int, ...]
    ) -> Value:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        if not isinstance(tensors, (list, tuple)):
            self.give_up(node, env, f"used by {name}")
            return None
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        dim = integer(dim) % len(out_shape)
        values = [self.value(t, env) for t in tensors]
        shapes = [shape_of(t) for t in tensors]
        if any(s is None for s in shapes) or any(isinstance(v, ParamVec) for v in values):
            self.give_up(node, env, f"{name} of parameters or non-tensors")
            return None
        if name == "stack":  # stacking = concatenating along a new dim
            values = [
                Source(tuple(a + (a >= dim) for a in v.axes), v.nodes, v.zero)
                if isinstance(v, Source)
                else v
                for v in values
            ]
            return self.joined(values, out_shape, name, node, env)
        tracked = [v for v in values if isinstance(v, Source)]
        if not tracked:
            return None
        if all(v.axes == (dim,) for v in tracked):
            parts_n, parts_z = [], []
            for value, shape in zip(values, shapes, strict=True):
                assert shape is not None
                if isinstance(value, Source):
                    parts_n.append(value.nodes)
                    parts_z.append(value.zero)
                else:
                    parts_n.append(np.full(shape[dim], UNOWNED, dtype=np.int64))
                    parts_z.append(np.zeros(shape[dim], dtype=bool))
            return Source((dim,), np.concatenate(parts_n), np.concatenate(parts_z))
        if any(dim in v.axes for v in tracked):
            self.give_up(node, env, f"concatenated by {name} along a channel dim, mixed")
            return None
        return self.joined(values, out_shape, name, node, env)

    def joined(
        self,
        values: list[Value],
        out_shape: tuple[int, ...],
        name: str,
        node: fx.Node,
        env: dict[fx.Node, Value],
    ) -> Value:
        """Tensors concatenated or stacked along a dim that is not a channel dim: their
        channels must go together (like an add)."""
        tracked = [v for v in values if isinstance(v, Source)]
        if len(tracked) != len(values) or len({v.axes for v in tracked}) != 1:
            self.give_up(node, env, f"joined by {name} with tensors of other channels")
            return None
        first = tracked[0]
        zero = first.zero
        for other in tracked[1:]:
            if other.nodes.shape != first.nodes.shape:
                self.give_up(node, env, f"joined by {name} with differently sized channels")
                return None
            self.union(first.nodes, other.nodes)
            zero = zero & other.zero
        return Source(first.axes, first.nodes, zero)

    def matmul(self, node: fx.Node, env: dict[fx.Node, Value], out_shape: tuple[int, ...]) -> Value:
        """``a @ b`` (``torch.matmul`` broadcasting, both operands at least 2-D)."""
        a, b = node.args[0], node.args[1]
        shape_a, shape_b = shape_of(a), shape_of(b)
        if shape_a is None or shape_b is None or len(shape_a) < 2 or len(shape_b) < 2:
            self.give_up(node, env, "multiplied as vectors")
            return None
        macs = math.prod(out_shape) * shape_a[-1]
        first, second = (self.value(a, env), shape_a), (self.value(b, env), shape_b)
        return self.contract(first, second, out_shape, macs, "matmul")

    def attention_product(
        self, node: fx.Node, env: dict[fx.Node, Value], out_shape: tuple[int, ...]
    ) -> Value:
        """``scaled_dot_product_attention(q, k, v)``: ``softmax(q kᵀ) v``, each head apart."""
        q, k, v = (arg(node, i, name) for i, name in enumerate(("query", "key", "value")))
        shapes = [shape_of(t) for t in (q, k, v)]
        mask = arg(node, 3, "attn_mask")
        if any(s is None or len(s) < 2 for s in shapes) or isinstance(
            self.value(mask, env), Source
        ):
            self.give_up(node, env, "attention over channels")
            return None
        shape_q, shape_k, shape_v = (s for s in shapes if s is not None)
        key = self.value(k, env)
        swapped: Value = None
        if isinstance(key, Source):  # kᵀ: swap the last two dims
            last = len(shape_k) - 1
            order = {last: last - 1, last - 1: last}
            moved = [order.get(axis, axis) for axis in key.axes]
            rank = np.argsort(moved)
            swapped = Source(
                tuple(sorted(moved)),
                np.transpose(key.nodes, rank),
                np.transpose(key.zero, rank),
            )
        transposed = (*shape_k[:-2], shape_k[-1], shape_k[-2])
        score_shape = (*out_shape[:-1], shape_k[-2])
        scores = self.contract(
            (self.value(q, env), shape_q),
            (swapped, transposed),
            score_shape,
            math.prod(score_shape) * shape_q[-1],
            "attention",
        )
        if isinstance(scores, Source) and len(out_shape) - 1 in scores.axes:
            self.freeze(scores, "attention softmax across channels")
            scores = None
        if isinstance(scores, Source):  # the softmax of zero scores is not zero
            scores = Source(scores.axes, scores.nodes, np.zeros_like(scores.zero))
        return self.contract(
            (scores, score_shape),
            (self.value(v, env), shape_v),
            out_shape,
            math.prod(out_shape) * shape_k[-2],
            "attention",
        )

    def contract(
        self,
        first: tuple[Value, tuple[int, ...]],
        second: tuple[Value, tuple[int, ...]],
        out_shape: tuple[int, ...],
        macs: int,
        name: str,
    ) -> Value:
        """The channels of a matrix product ``first @ second`` of shape ``out_shape`` and
        ``macs`` multiply-accumulates (recorded per output channel position, so that
        removing a head removes its share).

        A channel dim that is summed over is tied across its positions and must go with
        a batch dim (an attention head): then whole heads leave, on both sides. A product
        is zero where either factor is. Both a row and a column dim with channels (an
        outer product of channels) is not followed."""
        ndim = len(out_shape)
        parts: list[tuple[list[int], np.ndarray, np.ndarray, bool]] = []
        sources = []
        for (value, shape), is_first in ((first, True), (second, False)):
            if not isinstance(value, Source):
                continue
            sources.append(value)
            roles: list[int] = []
            nodes, zero = value.nodes, value.zero
            summed = False
            for k in range(len(value.axes) - 1, -1, -1):
                rel = value.axes[k] - len(shape)
                if rel == (-1 if is_first else -2):  # the summed dim: tie it, collapse it
                    along = np.moveaxis(nodes, k, 0)
                    self.union(along[:1], along[1:])
                    zero = np.asarray(zero.all(axis=k))
                    nodes = np.take(nodes, 0, axis=k)
                    summed = True
                else:
                    role = ndim + rel if rel < -2 else (ndim - 2 if is_first else ndim - 1)
                    roles.insert(0, role)
            parts.append((roles, nodes, zero, summed))
        if not parts:
            return None
        batch = [set(r for r in roles if r < ndim - 2) for roles, *_ in parts]
        edges = [set(r for r in roles if r >= ndim - 2) for roles, *_ in parts]
        if (
            any(summed and not b for (_, _, _, summed), b in zip(parts, batch, strict=True))
            or (len(parts) == 2 and batch[0] != batch[1])
            or (len(parts) == 1 and (parts[0][3] or batch[0]))
            or (len(parts) == 2 and edges[0] and edges[1])
        ):
            for source in sources:
                self.freeze(source, f"multiplied by {name} across channels")
            return None
        axes = sorted(set().union(*[set(roles) for roles, *_ in parts]))
        full_nodes, full_zero = [], []
        for roles, nodes, zero, _ in parts:
            view = [nodes.shape[roles.index(a)] if a in roles else 1 for a in axes]
            order = np.argsort(roles)
            full_nodes.append(np.transpose(nodes, order).reshape(view))
            full_zero.append(np.transpose(zero, order).reshape(view))
        if len(parts) == 2:
            self.union(full_nodes[0], full_nodes[1])
        widest = max(range(len(parts)), key=lambda i: full_nodes[i].size)
        shape = np.broadcast_shapes(*[n.shape for n in full_nodes])
        nodes_out = np.ascontiguousarray(np.broadcast_to(full_nodes[widest], shape))
        zero_out = np.zeros(shape, dtype=bool)
        for zero in full_zero:
            zero_out = zero_out | zero
        self.products.append((nodes_out.reshape(-1).copy(), macs // nodes_out.size))
        return Source(tuple(axes), nodes_out, zero_out)

    def reduce(
        self,
        node: fx.Node,
        name: str,
        source: Value,
        in_shape: tuple[int, ...] | None,
        out_shape: tuple[int, ...],
    ) -> Value:
        if not isinstance(source, Source) or in_shape is None:
            return None
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        keepdim = bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))
        dims = normalize_dims(dim, len(in_shape))
        if dims is None:
            self.freeze(source, f"reduced by {name}")
            return None
        if set(dims) & set(source.axes):
            if name == "sum":
                self.check_zero(source, name)
                remaining = [a for a in source.axes if a not in dims]
                if remaining:
                    self.freeze(source, f"summed across channels by {name}")
                return None
            self.freeze(source, f"reduced across channels by {name}")
            return None
        axes = source.axes if keepdim else tuple(a - sum(d < a for d in dims) for a in source.axes)
        return Source(axes, source.nodes, source.zero)

    def merge(
        self, node: fx.Node, name: str, env: dict[fx.Node, Value], out_shape: tuple[int, ...]
    ) -> Value:
        """Elementwise ``+ - * /`` with broadcasting."""
        operands = (
            list(node.args[:2])
            if len(node.args) >= 2
            else [
                *node.args,
                node.kwargs.get("other"),
            ]
        )
        ndim = len(out_shape)
        tracked: list[tuple[int, Source]] = []
        others: list[tuple[int, object]] = []
        for position, given in enumerate(operands):
            value = self.value(given, env)
            if isinstance(value, Source):
                offset = ndim - len(shape_of(given) or ())
                axes = tuple(a + offset for a in value.axes)
                tracked.append((position, Source(axes, value.nodes, value.zero)))
            else:
                others.append((position, given))
        if not tracked:
            return None
        for position, source in list(tracked):
            size = tuple(out_shape[a] for a in source.axes)
            if source.nodes.shape != size and all(
                n in (1, t) for n, t in zip(source.nodes.shape, size, strict=True)
            ):  # one channel broadcast over many: it cannot be removed, the others can
                self.freeze(source, f"broadcast over other channels by {name}")
                tracked.remove((position, source))
                others.append((position, operands[position]))
        if not tracked:
            return None
        axes = tracked[0][1].axes
        if any(s.axes != axes for _, s in tracked):
            self.give_up(node, env, f"combined by {name} with differently laid out channels")
            return None
        additive = name in ADD
        zero: np.ndarray | None = None
        for position, source in tracked:
            if name in DIV and position == 1:
                self.freeze(source, f"divides by {name} (a removed channel would divide by 0)")
                return None
            if zero is None:
                zero = source.zero
            else:
                zero = (zero & source.zero) if additive else (zero | source.zero)
        assert zero is not None
        nodes = tracked[0][1].nodes
        for _, source in tracked[1:]:
            try:
                self.union(nodes, source.nodes)
                nodes, zero = np.broadcast_arrays(nodes, zero)
            except ValueError:
                self.give_up(node, env, f"combined by {name} with differently sized channels")
                return None
        nodes = np.ascontiguousarray(nodes)
        zero = np.ascontiguousarray(zero)
        for _position, other in others:
            operand: Any = other
            if isinstance(operand, (int, float, bool)):
                if additive and operand != 0:
                    zero = np.zeros_like(zero)
                continue
            value = self.value(operand, env)
            shape = shape_of(operand)
            if isinstance(value, Source):  # broadcast one-channel operand (frozen above)
                if additive:
                    zero = np.zeros_like(zero)
                continue
            if isinstance(value, ParamVec):
                at = value.dim + ndim - value.ndim
                if at in axes:
                    if axes != (at,) or nodes.shape != (value.length,):
                        self.give_up(node, env, f"combined by {name} with parameter {value.name}")
                        return None
                    if value.fixed:
                        self.freeze_nodes(nodes, f"scaled by {value.name}, a size fixed in code")
                    self.attach(value.name, nodes)
                if additive:
                    zero = np.zeros_like(zero)
                continue
            if shape is None:
                if isinstance(operand, fx.Node) and additive:
                    zero = np.zeros_like(zero)
                continue
            offset = ndim - len(shape)
            if any(a - offset >= 0 and shape[a - offset] != 1 for a in axes):
                for _, source in tracked:
                    self.freeze(source, f"combined by {name} with a tensor of untracked channels")
                return None
            if additive:
                zero = np.zeros_like(zero)
        return Source(axes, nodes, zero)

    def param_op(
        self, node: fx.Node, name: str, param: ParamVec, out_shape: tuple[int, ...] | None
    ) -> Value:
        """Views of a per-channel parameter (``gamma.reshape(1, -1, 1, 1)``)."""
        if out_shape is None:
            return None
        if name in RESHAPES | {"expand", "expand_as", "to", "type_as", "float", "contiguous"}:
            big = [d for d, size in enumerate(out_shape) if size == param.length]
            if name in ("expand", "expand_as"):
                at = param.dim + len(out_shape) - param.ndim
                return ParamVec(param.name, param.length, at, len(out_shape), param.fixed)
            if math.prod(out_shape) == param.length and len(big) == 1:
                fixed = param.fixed or big[0] in fixed_sizes(node, name, len(out_shape))
                return ParamVec(param.name, param.length, big[0], len(out_shape), fixed)
            if name in ("to", "type_as", "float", "contiguous"):
                return param
        return None
