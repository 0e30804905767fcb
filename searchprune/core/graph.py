"""Channel dependency groups derived from the traced graph of a model.

Removing an output channel of one layer is only real when everything tied to that
channel goes with it (the idea behind Torch-Pruning's dependency graph, Fang et al.
2023): convolutions whose outputs are added by a residual connection must lose the same
channels; a BatchNorm after a conv must have its affine parameters masked with the
conv's channels (else its bias keeps the channel alive); a flatten into a Linear maps
each channel to a block of the Linear's input columns.

The graph is traced once with :mod:`torch.fx`. Each tensor in the graph carries a
*source*: which channel group owns each of its dim-1 channels. Layers create groups,
residual adds merge them (union-find), and any operation this module cannot follow
freezes the groups that reach it, so that masking stays correct and accounting stays
honest for any architecture, not just the built-in ones.
"""

from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from searchprune.core.layers import LayerInfo

Segment = tuple[int | None, int]  # (group id, or None for channels no layer owns; size)

_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Mish,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
_NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)
_PASS_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.hardswish,
    F.dropout,
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.dropout,
    operator.neg,
}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "to"}
_RESHAPE_CALLS = {"flatten", "view", "reshape"}
_ELEMENTWISE = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
}
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "add_", "mul_"}


@dataclass(frozen=True)
class Source:
    """Which group owns each dim-1 channel of a tensor.

    ``repeat`` > 1 after a flatten: each channel then spans ``repeat`` consecutive
    features of the flattened tensor.
    """

    segments: tuple[Segment, ...]
    repeat: int = 1

    @property
    def channels(self) -> int:
        return sum(size for _, size in self.segments)

    def group_ids(self) -> list[int]:
        return [gid for gid, _ in self.segments if gid is not None]


@dataclass
class ChannelGroup:
    """Output channels that must be kept or removed together.

    ``members`` are layers whose output channels are these channels (several when a
    residual add ties them); ``norms`` are BatchNorm modules whose affine parameters
    follow them. ``frozen`` names why the group cannot be pruned, or is ``None``.
    """

    id: int
    size: int
    members: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    frozen: str | None = None

    @property
    def prunable(self) -> bool:
        return self.frozen is None


@dataclass
class DependencyGraph:
    """Channel groups of a model and, for each layer, where its input channels come from.

    ``inputs[layer]`` is ``None`` when the mapping could not be followed (the layer's
    input channels are then treated as always alive).
    """

    groups: list[ChannelGroup]
    group_of: dict[str, int]
    inputs: dict[str, Source | None]
    traced: bool

    def prunable_groups(self) -> list[ChannelGroup]:
        return [group for group in self.groups if group.prunable]


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class _Tracer:
    """Walks the fx graph once, propagating :class:`Source` through every node."""

    def __init__(self, model: nn.Module, layers: list[LayerInfo]) -> None:
        self.modules = dict(model.named_modules())
        self.layers = {layer.name: layer for layer in layers}
        self.sets = _UnionFind()
        self.size: list[int] = []
        self.members: dict[int, list[str]] = {}
        self.norms: dict[int, list[str]] = {}
        self.frozen: dict[int, str] = {}
        self.inputs: dict[str, Source | None] = {}
        self.group_of: dict[str, int] = {}

    # ----------------------------------------------------------------- helpers
    def new_group(self, layer: str, size: int) -> int:
        gid = self.sets.add()
        self.size.append(size)
        self.members[gid] = [layer]
        self.group_of[layer] = gid
        return gid

    def freeze(self, source: Source | None, reason: str) -> None:
        if source is None:
            return
        for gid in source.group_ids():
            self.frozen.setdefault(gid, reason)

    @staticmethod
    def shape(node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def tensor_args(self, node: fx.Node, env: dict[fx.Node, Source | None]) -> list[fx.Node]:
        flat: list[fx.Node] = []
        for arg in [*node.args, *node.kwargs.values()]:
            if isinstance(arg, (list, tuple)):
                flat.extend(a for a in arg if isinstance(a, fx.Node))
            elif isinstance(arg, fx.Node):
                flat.append(arg)
        return [a for a in flat if self.shape(a) is not None]

    # ------------------------------------------------------------------ rules
    def visit(self, node: fx.Node, env: dict[fx.Node, Source | None]) -> Source | None:
        shape = self.shape(node)
        if node.op == "placeholder":
            return Source(((None, shape[1]),)) if shape and len(shape) >= 2 else None
        if node.op == "output":
            for arg in self.tensor_args(node, env):
                self.freeze(env.get(arg), "feeds the model output")
            return None
        args = self.tensor_args(node, env)
        first = env.get(args[0]) if args else None
        if node.op == "call_module":
            return self.visit_module(node, self.modules[str(node.target)], first, shape)
        if node.op in ("call_function", "call_method"):
            return self.visit_call(node, args, env, first, shape)
        for arg in args:
            self.freeze(env.get(arg), f"used by {node.op} {node.target}")
        return None

    def visit_module(
        self, node: fx.Node, module: nn.Module, source: Source | None, shape: tuple[int, ...] | None
    ) -> Source | None:
        name = str(node.target)
        if name in self.layers:
            layer = self.layers[name]
            expected = layer.in_channels
            channel_last = layer.kind == "linear"
            fits = (
                source is not None
                and layer.groups == 1
                and (not channel_last or (shape is not None and len(shape) == 2))
                and source.channels * source.repeat == expected
            )
            if not fits:
                self.freeze(source, f"feeds {name} through a mapping not followed")
            self.inputs[name] = source if fits else None
            gid = self.new_group(name, layer.out_channels)
            if channel_last and (shape is None or len(shape) != 2):
                self.frozen.setdefault(gid, f"{name} has a non-2-D output")
            return Source(((gid, layer.out_channels),))
        if isinstance(module, _NORM_MODULES):
            if source is not None and len(source.segments) == 1 and source.repeat == 1:
                owner = source.segments[0][0]
                if owner is not None:
                    self.norms.setdefault(owner, []).append(name)
                return source
            self.freeze(source, f"normalized by {name} across several groups")
            return None
        if isinstance(module, _PASS_MODULES):
            return source
        if isinstance(module, (nn.Flatten, nn.Unflatten)) and shape is not None:
            arg = node.args[0]
            assert isinstance(arg, fx.Node)
            return self.reshape(arg, source, shape, name)
        self.freeze(source, f"used by module {name} ({type(module).__name__})")
        return None

    def visit_call(
        self,
        node: fx.Node,
        args: list[fx.Node],
        env: dict[fx.Node, Source | None],
        source: Source | None,
        shape: tuple[int, ...] | None,
    ) -> Source | None:
        target = node.target
        name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        if shape is None:  # size(), shape lookups and other non-tensor values
            return None
        if target in _PASS_FUNCTIONS or (node.op == "call_method" and target in _PASS_METHODS):
            return source
        if target in _ELEMENTWISE or (node.op == "call_method" and target in _ELEMENTWISE_METHODS):
            return self.merge(args, env, shape, name)
        if target is torch.flatten or name in _RESHAPE_CALLS:
            return self.reshape(args[0], source, shape, name)
        if target is torch.cat:
            return self.concat(node, args, env, name)
        if name == "mean" and self.keeps_channels(node, shape, args[0]):
            return source
        for arg in args:
            self.freeze(env.get(arg), f"used by {name}")
        return None

    def merge(
        self,
        args: list[fx.Node],
        env: dict[fx.Node, Source | None],
        shape: tuple[int, ...],
        name: str,
    ) -> Source | None:
        sources = [env.get(arg) for arg in args]
        tensors = [s for s, arg in zip(sources, args, strict=True) if self.shape(arg) == shape]
        if len(tensors) != len(args) or any(s is None for s in tensors):
            for s in sources:
                self.freeze(s, f"combined by {name} with a tensor of another shape or origin")
            return None
        first = tensors[0]
        assert first is not None
        for other in tensors[1:]:
            assert other is not None
            if [size for _, size in other.segments] != [size for _, size in first.segments] or (
                other.repeat != first.repeat
            ):
                self.freeze(first, f"combined by {name} with differently split channels")
                self.freeze(other, f"combined by {name} with differently split channels")
                return None
            for (gid_a, _), (gid_b, _) in zip(first.segments, other.segments, strict=True):
                if gid_a is None or gid_b is None:
                    self.freeze(first, f"added by {name} to channels no layer owns")
                    self.freeze(other, f"added by {name} to channels no layer owns")
                elif gid_a != gid_b:
                    self.sets.union(gid_a, gid_b)
        return first

    def reshape(
        self, arg: fx.Node, source: Source | None, shape: tuple[int, ...], name: str
    ) -> Source | None:
        in_shape = self.shape(arg)
        if source is None or in_shape is None:
            return None
        if (
            len(shape) == 2
            and len(in_shape) >= 2
            and shape[0] == in_shape[0]
            and (shape[1] == math.prod(in_shape[1:]))
        ):
            return Source(source.segments, source.repeat * math.prod(in_shape[2:]))
        if tuple(shape) == tuple(in_shape):
            return source
        if not source.group_ids() and len(shape) >= 2:
            return Source(((None, shape[1]),))
        self.freeze(source, f"reshaped by {name} to {list(shape)}")
        return None

    def concat(
        self, node: fx.Node, args: list[fx.Node], env: dict[fx.Node, Source | None], name: str
    ) -> Source | None:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        sources = [env.get(arg) for arg in args]
        if dim != 1 or any(s is None or s.repeat != 1 for s in sources):
            for s in sources:
                self.freeze(s, f"concatenated by {name} along dim {dim}")
            return None
        segments: list[Segment] = []
        for s in sources:
            assert s is not None
            segments.extend(s.segments)
        return Source(tuple(segments))

    def keeps_channels(self, node: fx.Node, shape: tuple[int, ...], arg: fx.Node) -> bool:
        in_shape = self.shape(arg)
        return in_shape is not None and len(shape) >= 2 and shape[:2] == in_shape[:2]

    # ------------------------------------------------------------------ result
    def result(self) -> DependencyGraph:
        root_of = {gid: self.sets.find(gid) for gid in range(len(self.size))}
        groups: dict[int, ChannelGroup] = {}
        for gid, root in root_of.items():
            group = groups.setdefault(root, ChannelGroup(id=root, size=self.size[root]))
            group.members.extend(self.members.get(gid, []))
            group.norms.extend(self.norms.get(gid, []))
            if gid in self.frozen and group.frozen is None:
                group.frozen = self.frozen[gid]
        for group in groups.values():
            dense = [m for m in group.members if not self.layers[m].prunable]
            if dense and group.frozen is None:
                group.frozen = f"tied to {dense[0]}, which is kept dense"
        renumber = {root: index for index, root in enumerate(sorted(groups))}
        for group in groups.values():
            group.id = renumber[group.id]

        def remap(source: Source | None) -> Source | None:
            if source is None:
                return None
            return Source(
                tuple((None if g is None else renumber[root_of[g]], s) for g, s in source.segments),
                source.repeat,
            )

        return DependencyGraph(
            groups=[groups[root] for root in sorted(groups)],
            group_of={name: renumber[root_of[gid]] for name, gid in self.group_of.items()},
            inputs={name: remap(source) for name, source in self.inputs.items()},
            traced=True,
        )


def _untraced_graph(layers: list[LayerInfo], reason: str) -> DependencyGraph:
    groups = [
        ChannelGroup(
            id=index,
            size=layer.out_channels,
            members=[layer.name],
            frozen=None if layer.prunable else "kept dense",
        )
        for index, layer in enumerate(layers)
    ]
    warnings.warn(
        f"could not trace the model with torch.fx ({reason}); channel pruning will mask "
        "each layer's output channels without following residual adds or BatchNorm",
        stacklevel=3,
    )
    return DependencyGraph(
        groups=groups,
        group_of={layer.name: index for index, layer in enumerate(layers)},
        inputs={layer.name: None for layer in layers},
        traced=False,
    )


def build_dependency_graph(
    model: nn.Module, example_input: Tensor, layers: list[LayerInfo]
) -> DependencyGraph:
    """Trace ``model`` once and derive its channel groups and input mappings.

    Falls back to one group per layer (with a warning) when the model cannot be traced.
    """
    try:
        traced = fx.symbolic_trace(model)
        was_training = model.training
        traced.eval()
        with torch.no_grad():
            ShapeProp(traced).propagate(example_input)
        model.train(was_training)
    except Exception as error:  # fx raises many kinds of errors on dynamic code
        return _untraced_graph(layers, f"{type(error).__name__}: {error}")
    tracer = _Tracer(model, layers)
    env: dict[fx.Node, Source | None] = {}
    for node in traced.graph.nodes:
        env[node] = tracer.visit(node, env)
    missing = [layer.name for layer in layers if layer.name not in tracer.group_of]
    if missing:
        return _untraced_graph(layers, f"layers {missing} were not found in the traced graph")
    return tracer.result()
