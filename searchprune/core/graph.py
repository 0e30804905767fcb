"""Channel dependency groups derived from the traced graph of a model.

Removing an output channel of one layer is only real when everything tied to that
channel goes with it (the idea behind Torch-Pruning's dependency graph, Fang et al.
2023, "DepGraph: Towards Any Structural Pruning"): convolutions whose outputs are added
by a residual connection must lose the same channels; a depthwise conv's output channel
``i`` *is* its input channel ``i``; a grouped conv must keep as many channels in every
group; a BatchNorm after a conv (or after a concatenation) loses the channels it
normalizes; a flatten into a Linear maps each channel to a block of its input columns.

The graph is traced once with :mod:`torch.fx` and walked node by node. Every output row
of a layer is a *channel node*; every tensor carries, for the dims that hold channels
(dim 1 of a conv's output, the last dim of a Linear's, and wherever ``permute``,
``view``, ``flatten``, ``split`` and ``cat`` move them), an array naming the node of
each element. Operations that tie channels (adds, products, concatenations along other
dims, groups) join nodes; connected nodes form one *element*, removed as a whole; and
elements that play the same part in every layer form a :class:`ChannelGroup`, the unit
a search prunes. Whatever the walk cannot follow freezes the nodes that reach it (with
the reason), so masking stays correct and accounting stays honest for any model.

Each element also carries a *zero* flag along the walk: whether its value is exactly 0
once its element is removed (masked weights, bias and norm affine). A product with a
zero is zero, a sum is zero only if every term is, a sigmoid of 0 is not. A layer that
reads a channel that is not zero there freezes it: the compact model could not drop the
channel without changing the output. The compact model runs the same code, so sizes and
positions written in it pin the channels they reach, unless compact can update them (an
attention module's head count, a module's list of split sizes).

:mod:`searchprune.core.trace` traces (around what fx cannot follow),
:mod:`searchprune.core.walk` and :mod:`searchprune.core.tensor_ops` hold the rules per
node, :mod:`searchprune.core.channels` the per-element arrays; this module assembles
the result.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from searchprune.core.channels import NORM_TYPES, UNOWNED
from searchprune.core.layers import CallRecorder, LayerInfo, no_attention_fastpath
from searchprune.core.trace import trace_model
from searchprune.core.walk import Walker

__all__ = ["NORM_TYPES", "ChannelGroup", "DependencyGraph", "build_dependency_graph"]


@dataclass
class ChannelGroup:
    """Elements (channels removed as a whole) that play the same part in every layer.

    ``elements`` are element ids (see :class:`DependencyGraph`); ``members`` are layers
    whose output rows these elements are; ``norms`` are norm modules whose channels they
    are. ``frozen`` names why the group cannot be pruned, or is ``None``.
    """

    id: int
    elements: np.ndarray
    members: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    frozen: str | None = None

    @property
    def size(self) -> int:
        return len(self.elements)

    @property
    def prunable(self) -> bool:
        return self.frozen is None


@dataclass
class DependencyGraph:
    """Elements and groups of a model, and where each layer's channels are.

    ``rows[layer]`` is the element of each output channel of a layer (an output row of a
    Linear or Conv weight); ``cols[layer]`` the element of each of its input channels,
    or ``None`` when they could not be followed (they then always stay). ``norms`` and
    ``params`` give the element of each channel of a norm module and of each entry of a
    per-channel tensor (a layer scale, a PReLU slope) that compact slices.
    ``per_channel`` is the number of parameters per channel of each of those (a norm's
    affine weight and bias; 0 for a buffer), ``other_params`` the model's parameters
    outside layers, norms and per-channel tensors (never removed). ``products`` are the
    products between activations (attention) whose MACs shrink with channels: the
    element of each position of their output's channel dims and the MACs of each;
    ``other_flops`` the MACs of the other such products.
    ``patches`` are module attributes (an attention module's head count) compact sets to
    the number of their elements kept; ``list_patches`` list attributes (split sizes)
    set to the number kept in each piece. ``padded`` are norms whose statistics mix channels
    (LayerNorm, GroupNorm): the element of each channel, the dim it is on and whether the
    norm has a per-channel affine (masked with the channels); compact runs them with the
    removed channels put back as zeros. ``attentions`` are the ``nn.MultiheadAttention``
    modules whose heads are followed: the element of each head (compact replaces them).
    """

    groups: list[ChannelGroup]
    elements: int
    rows: dict[str, np.ndarray]
    cols: dict[str, np.ndarray | None]
    norms: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    per_channel: dict[str, int]
    other_params: int
    traced: bool
    notices: list[str] = field(default_factory=list)
    other_flops: int = 0
    patches: list[tuple[str, str, np.ndarray]] = field(default_factory=list)
    list_patches: list[tuple[str, str, list[np.ndarray]]] = field(default_factory=list)
    products: list[tuple[np.ndarray, int]] = field(default_factory=list)
    padded: dict[str, tuple[np.ndarray, int, bool]] = field(default_factory=dict)
    attentions: dict[str, np.ndarray] = field(default_factory=dict)

    def prunable_groups(self) -> list[ChannelGroup]:
        return [group for group in self.groups if group.prunable]

    def frozen_elements(self) -> np.ndarray:
        """Boolean per element: True where its group is frozen."""
        frozen = np.zeros(self.elements, dtype=bool)
        for group in self.groups:
            if not group.prunable:
                frozen[group.elements] = True
        return frozen

    def frozen_summary(self, limit: int = 5) -> str:
        """The frozen groups' reasons, most channels first (for error messages)."""
        counts: dict[str, int] = {}
        for group in self.groups:
            if group.frozen is not None:
                counts[group.frozen] = counts.get(group.frozen, 0) + group.size
        ranked = sorted(counts.items(), key=lambda item: -item[1])
        lines = [f"{size} channels: {reason}" for reason, size in ranked[:limit]]
        if len(ranked) > limit:
            lines.append(f"... and {len(ranked) - limit} more reasons")
        return "; ".join(lines)


# --------------------------------------------------------------------------- result
def _signature_hash(entity: np.ndarray, count: np.ndarray, salt: int) -> np.ndarray:
    """A 64-bit mix of (entity, count) pairs (splitmix64), summed per element."""
    with np.errstate(over="ignore"):
        x = (entity.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (
            count.astype(np.uint64) + np.uint64(salt)
        )
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _result(
    walker: Walker, model: nn.Module, layers: list[LayerInfo], notices: list[str], traced: bool
) -> DependencyGraph:
    n = walker.count
    if walker.edges:
        a = np.concatenate([e[0] for e in walker.edges])
        b = np.concatenate([e[1] for e in walker.edges])
    else:
        a = b = np.zeros(0, dtype=np.int64)
    # imported here: scipy costs ~0.5 s, and `import searchprune` must stay light
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    adjacency = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, label = connected_components(adjacency, directed=False)
    label = label.astype(np.int64)
    # renumber so that element 0 is UNOWNED's and the rest follow first appearance
    _, first = np.unique(label, return_index=True)
    order = np.argsort(first)
    renumber = np.empty_like(order)
    renumber[order] = np.arange(len(order))
    element = renumber[label]
    count = len(order)
    reason: list[str | None] = [None] * count
    for nodes, why in walker.frozen:
        for e in np.unique(element[nodes]).tolist():
            if reason[e] is None:
                reason[e] = why
    reason[element[UNOWNED]] = reason[element[UNOWNED]] or "channels no layer produces"

    rows = {name: element[nodes] for name, nodes in walker.rows.items()}
    cols = {name: None if c is None else element[c] for name, c in walker.cols.items()}
    norms = {name: element[nodes] for name, nodes in walker.norms.items()}
    params = {name: element[nodes] for name, nodes in walker.params.items()}
    padded = {
        name: (element[nodes], dim, affine) for name, (nodes, dim, affine) in walker.padded.items()
    }

    # elements that play the same part everywhere (same rows, columns and channels per
    # layer, norm and parameter) form one group
    entities: list[np.ndarray] = [
        *(rows.values()),
        *(c for c in cols.values() if c is not None),
        *norms.values(),
        *params.values(),
        *(elements for elements, _, _ in padded.values()),
    ]
    h1 = np.zeros(count, dtype=np.uint64)
    h2 = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for index, elements in enumerate(entities):
            ids, counts = np.unique(elements, return_counts=True)
            tag = np.full(len(ids), index, dtype=np.int64)
            h1[ids] += _signature_hash(tag, counts, 1)
            h2[ids] += _signature_hash(tag, counts, 2)
    frozen_flag = np.array([r is not None for r in reason], dtype=np.uint64)
    keys = np.stack([h1, h2, frozen_flag], axis=1)
    _, group_index = np.unique(keys, axis=0, return_inverse=True)
    group_index = group_index.reshape(-1)
    # number groups by their first element
    _, first_element = np.unique(group_index, return_index=True)
    group_order = np.argsort(first_element)
    group_id = np.empty_like(group_order)
    group_id[group_order] = np.arange(len(group_order))
    element_group = group_id[group_index]

    used = np.zeros(count, dtype=bool)
    for elements in entities:
        used[elements] = True
    groups: list[ChannelGroup] = []
    members_of: dict[int, list[str]] = {}
    norms_of: dict[int, list[str]] = {}
    for name, elements in rows.items():
        for g in dict.fromkeys(element_group[elements].tolist()):
            members_of.setdefault(g, []).append(name)
    for name, elements in norms.items():
        for g in dict.fromkeys(element_group[elements].tolist()):
            norms_of.setdefault(g, []).append(name)
    by_group = np.argsort(element_group, kind="stable")
    bounds = np.searchsorted(element_group[by_group], np.arange(len(group_order) + 1))
    layer_order = {layer.name: layer.order for layer in layers}
    for g in range(len(group_order)):
        elements = by_group[bounds[g] : bounds[g + 1]]
        if not used[elements].any():
            continue
        members = sorted(members_of.get(g, []), key=lambda m: layer_order.get(m, 0))
        groups.append(
            ChannelGroup(
                len(groups), elements, members, norms_of.get(g, []), reason[int(elements[0])]
            )
        )

    per_channel: dict[str, int] = {}
    counted: set[int] = set()
    for layer in layers:
        module = model.get_submodule(layer.name)
        for attr in (layer.param, layer.bias):
            tensor = getattr(module, attr, None) if attr else None
            if isinstance(tensor, nn.Parameter):
                counted.add(id(tensor))
    for name in norms:
        affine = [getattr(walker.modules[name], attr, None) for attr in ("weight", "bias")]
        affine = [t for t in affine if isinstance(t, nn.Parameter)]
        per_channel[name] = len(affine)
        counted.update(id(t) for t in affine)
    for name in params:
        tensor = functools.reduce(getattr, name.split("."), model)
        is_param = isinstance(tensor, nn.Parameter) and id(tensor) not in counted
        per_channel[name] = int(is_param)
        counted.add(id(tensor))
    other = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return DependencyGraph(
        groups=groups,
        elements=count,
        rows=rows,
        cols=cols,
        norms=norms,
        params=params,
        per_channel=per_channel,
        other_params=other,
        traced=traced,
        notices=notices,
        patches=[(owner, attr, element[nodes]) for owner, attr, nodes in walker.patches],
        list_patches=[
            (owner, attr, [element[nodes] for nodes in pieces])
            for owner, attr, pieces in walker.list_patches
        ],
        products=[(element[nodes], macs) for nodes, macs in walker.products],
        padded=padded,
        attentions={name: element[nodes] for name, nodes in walker.attentions.items()},
    )


def build_dependency_graph(
    model: nn.Module, example_input: Tensor, layers: list[LayerInfo]
) -> DependencyGraph:
    """Trace ``model`` once and derive its elements, groups and channel mappings.

    Submodules fx cannot trace are kept whole (their channels frozen); when the model
    cannot be traced at all, every channel is frozen. Both cases are warned about.
    """
    walker = Walker(model, layers)
    modules = [model.get_submodule(layer.name) for layer in layers]
    owner = {id(layer.weight(model)): layer.name for layer in layers}
    recorder = CallRecorder(owner, modules)
    was_training = model.training
    model.eval()
    try:
        with no_attention_fastpath():
            traced, notices = trace_model(model, example_input, layers, recorder)
        walker.walk(traced.graph)
        traced_ok = True
    except Exception as error:  # fx raises many kinds of errors on dynamic code
        walker = Walker(model, layers)
        recorder = CallRecorder(owner, modules)
        with torch.no_grad(), no_attention_fastpath(), recorder:
            model(example_input)
        notices = [
            f"could not trace the model with torch.fx ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:160] if str(error) else ''}); every channel is "
            "frozen (weight granularity still works)"
        ]
        traced_ok = False
    finally:
        model.train(was_training)
    for layer in layers:
        if layer.name not in walker.rows:
            walker.freeze_nodes(
                walker.layer_rows(layer.name, layer.out_channels),
                "inside a module that could not be traced",
            )
            walker.set_cols(layer.name, None)
    for notice in notices:
        warnings.warn(notice, stacklevel=2)
    graph = _result(walker, model, layers, notices, traced_ok)
    reduced = sum(len(elements) * macs for elements, macs in graph.products)
    graph.other_flops = max(recorder.matmul_macs - reduced, 0)
    return graph
