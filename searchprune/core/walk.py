"""The walk over a traced model: every fx node's rule, for modules (weight layers,
norms, activations, pooling, attention) and calls; tensor ops are in
:mod:`searchprune.core.tensor_ops` (see :mod:`searchprune.core.graph`)."""

from __future__ import annotations

import functools
import math

import numpy as np
from torch import Tensor, fx, nn

from searchprune.core.channels import (
    ADD,
    DIV,
    MIXING_NORMS,
    MUL,
    NONZERO_CALLS,
    NORM_TYPES,
    PERMUTES,
    POOL_CALLS,
    REDUCTIONS,
    RESHAPES,
    SPLITS,
    ZERO_CALLS,
    ParamVec,
    Source,
    Value,
    arg,
    name_of,
    shape_of,
)
from searchprune.core.layers import LayerInfo
from searchprune.core.tensor_ops import TensorOps

_ZERO_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Tanh,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Hardshrink,
    nn.Softshrink,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.Upsample,
)
_NONZERO_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid)
_POOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.LPPool1d,
    nn.LPPool2d,
)


class Walker(TensorOps):
    """Walks the fx graph once, propagating :class:`Source` values through every node."""

    def __init__(self, model: nn.Module, layers: list[LayerInfo]) -> None:
        super().__init__(dict(model.named_modules()))
        self.model = model
        self.layers = {layer.name: layer for layer in layers}
        self.attention_of = {layer.name: layer for layer in layers if layer.kind == "mha_in_proj"}
        self.rows: dict[str, np.ndarray] = {}
        self.cols: dict[str, np.ndarray | None] = {}
        self.norms: dict[str, np.ndarray] = {}
        self.padded: dict[str, tuple[np.ndarray, int, bool]] = {}
        self.attentions: dict[str, np.ndarray] = {}  # MultiheadAttention: a node per head

    def layer_rows(self, name: str, count: int) -> np.ndarray:
        if name not in self.rows:
            self.rows[name] = self.new_nodes(count)
        return self.rows[name]

    def set_cols(self, name: str, cols: np.ndarray | None) -> None:
        """Record a layer's input nodes; a layer called again must see the same ones."""
        if name not in self.cols:
            self.cols[name] = cols
            return
        previous = self.cols[name]
        if previous is not None and cols is not None and previous.shape == cols.shape:
            self.union(previous, cols)
            return
        for nodes in (previous, cols):
            if nodes is not None:
                self.freeze_nodes(nodes, f"read by {name} in calls that differ")
        self.cols[name] = None

    def walk(self, graph: fx.Graph) -> None:
        env: dict[fx.Node, Value] = {}
        for node in graph.nodes:
            env[node] = self.visit(node, env)

    def visit(self, node: fx.Node, env: dict[fx.Node, Value]) -> Value:
        if node.op == "placeholder":
            return None
        if node.op == "get_attr":
            return self.get_attr(node)
        if node.op == "output":
            self.give_up(node, env, "feeds the model output")
            return None
        if node.op == "call_module":
            return self.visit_module(node, env)
        name = name_of(node)
        try:
            return self.visit_call(node, name, env)
        except (ValueError, IndexError, TypeError) as error:  # an op used in a way not foreseen
            self.give_up(node, env, f"used by {name} ({error})")
            return None

    def get_attr(self, node: fx.Node) -> Value:
        try:
            tensor = functools.reduce(getattr, str(node.target).split("."), self.model)
        except AttributeError:
            return None
        if not isinstance(tensor, Tensor) or tensor.numel() <= 1:
            return None
        big = [d for d, size in enumerate(tensor.shape) if size > 1]
        if len(big) != 1:
            return None
        return ParamVec(str(node.target), int(tensor.shape[big[0]]), big[0], tensor.dim())

    # ----------------------------------------------------------------- modules

    def visit_module(self, node: fx.Node, env: dict[fx.Node, Value]) -> Value:
        name = str(node.target)
        module = self.modules[name]
        first = self.value(node.args[0], env) if node.args else None
        in_shape, out_shape = shape_of(node.args[0]) if node.args else None, shape_of(node)
        if name in self.attention_of:
            return self.attention(node, name, env)
        if name in self.layers:
            return self.layer(name, first, in_shape, out_shape)
        if isinstance(module, NORM_TYPES):
            return self.channel_norm(name, module, first, in_shape)
        if isinstance(module, MIXING_NORMS):
            return self.mixing_norm(name, module, first, in_shape, out_shape)
        if isinstance(module, _ZERO_MODULES):
            return self.elementwise(first, in_shape, out_shape, zero=True)
        if isinstance(module, nn.PReLU):
            return self.prelu(name, module, first)
        if isinstance(module, _NONZERO_MODULES):
            return self.elementwise(first, in_shape, out_shape, zero=False)
        if isinstance(module, _POOL_MODULES):
            spatial = int(type(module).__name__[-2])
            return self.pool(first, in_shape, out_shape, spatial, type(module).__name__)
        if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
            return self.softmax(first, in_shape, module.dim, type(module).__name__)
        if isinstance(module, nn.Flatten):
            return self.reshape(node, first, in_shape, out_shape, "flatten")
        if isinstance(module, nn.Unflatten) and in_shape is not None:
            start = module.dim % len(in_shape)
            sizes = module.unflattened_size
            fixed = {start + k: int(size) for k, size in enumerate(sizes)}
            return self.reshape(node, first, in_shape, out_shape, "unflatten", fixed)
        self.give_up(node, env, f"used by module {name} ({type(module).__name__})")
        return None

    def layer(
        self,
        name: str,
        source: Value,
        in_shape: tuple[int, ...] | None,
        out_shape: tuple[int, ...] | None,
    ) -> Value:
        layer = self.layers[name]
        rows = self.layer_rows(name, layer.out_channels)
        if out_shape is None or in_shape is None:
            self.freeze(source, f"feeds {name}, whose output is not a tensor")
            self.freeze_nodes(rows, f"{name} returns a non-tensor")
            self.set_cols(name, None)
            return None
        if layer.kind == "linear" or layer.kind == "embedding":
            in_axis, out_axis = len(in_shape) - 1, len(out_shape) - 1
        else:
            spatial = int(layer.kind[-2])
            in_axis, out_axis = len(in_shape) - spatial - 1, len(out_shape) - spatial - 1
        result = Source((out_axis,), rows, np.ones(rows.shape, dtype=bool))
        if layer.kind == "embedding" or layer.transposed:
            self.freeze(source, f"feeds {name} ({layer.kind}), whose channels are not pruned")
            self.freeze_nodes(rows, f"{name} ({layer.kind}) channels are not pruned")
            self.set_cols(name, None)
            return result
        cols: np.ndarray | None = None
        if isinstance(source, Source):
            if source.axes == (in_axis,) and source.nodes.shape == (layer.in_channels,):
                cols = source.nodes
            else:
                self.freeze(source, f"feeds {name} through a mapping not followed")
        if not layer.prunable:
            self.freeze_nodes(rows, f"tied to {name}, which is kept dense")
        if layer.depthwise:
            if cols is None:
                self.freeze_nodes(rows, f"depthwise {name} reads channels no layer produces")
            else:
                self.union(rows, cols)  # output channel i is input channel i
            self.set_cols(name, cols)
            return result
        if isinstance(source, Source) and cols is not None:
            self.check_zero(source, name)
            if layer.reparameterized:
                self.freeze_nodes(cols, f"read by {name}, whose output is not linear in its weight")
                cols = None
        if layer.groups > 1:
            self.bundle(rows, layer.groups)
            if cols is not None:
                self.bundle(cols, layer.groups)
        self.set_cols(name, cols)
        return result

    def bundle(self, nodes: np.ndarray, groups: int) -> None:
        """Tie the ``i``-th channel of every group of a grouped conv: removing channels
        the same way in every group keeps the groups equal (and the conv grouped)."""
        if nodes.size % groups:
            self.freeze_nodes(nodes, "split into groups of unequal size")
            return
        blocks = nodes.reshape(groups, -1)
        self.union(blocks[:1], blocks[1:])

    def channel_norm(
        self, name: str, module: nn.Module, source: Value, in_shape: tuple[int, ...] | None
    ) -> Value:
        if not isinstance(source, Source):
            return None
        if in_shape is None or source.axes != (1,) or len(in_shape) < 2:
            self.freeze(source, f"normalized by {name} along other dims")
            return None
        self.record_norm(name, source.nodes)
        affine = isinstance(getattr(module, "weight", None), Tensor)
        running = getattr(module, "running_mean", None) is not None
        zero = np.ones(source.nodes.shape, dtype=bool)
        if not affine and running:  # (0 - mean) / std with no affine to mask: not 0
            zero = np.zeros(source.nodes.shape, dtype=bool)
        if not affine and not running:  # instance norm of a zero channel is 0
            zero = source.zero
        act = getattr(module, "act", None)  # timm's BatchNormAct2d: BatchNorm + activation
        if isinstance(act, nn.Module) and not isinstance(act, _ZERO_MODULES):
            zero = np.zeros(source.nodes.shape, dtype=bool)
        return Source(source.axes, source.nodes, zero)

    def record_norm(self, name: str, nodes: np.ndarray) -> None:
        if name in self.norms:
            self.union(self.norms[name], nodes)
        else:
            self.norms[name] = nodes

    def mixing_norm(
        self,
        name: str,
        module: nn.Module,
        source: Value,
        in_shape: tuple[int, ...] | None,
        out_shape: tuple[int, ...] | None,
    ) -> Value:
        """LayerNorm/GroupNorm/RMSNorm: the statistics mix channels. Over the dims of an
        attention head, the head's channels leave whole; over one channel dim, compact
        runs the norm on its input with the removed channels put back as zeros, which is
        exact when they are zeros in the masked model (their affine masked with them)."""
        if not isinstance(source, Source) or in_shape is None:
            return None
        shape = getattr(module, "normalized_shape", None)
        mixed = set(range(len(in_shape) - len(shape), len(in_shape))) if shape else None
        if mixed is not None and len(source.axes) > 1 and not set(source.axes) <= mixed:
            return self.mixed(source, mixed, f"normalized by {name} ({type(module).__name__})")
        if len(source.axes) != 1 or out_shape != in_shape:
            self.freeze(source, f"normalized by {name} across several channel dims")
            return None
        self.check_zero(source, name)
        if name in self.padded and self.padded[name][0].shape == source.nodes.shape:
            self.union(self.padded[name][0], source.nodes)
        elif name in self.padded:
            self.freeze(source, f"normalized by {name} in calls that differ")
            return None
        affine = isinstance(getattr(module, "weight", None), Tensor)
        self.padded[name] = (source.nodes, source.axes[0], affine)
        act = getattr(module, "act", None)  # timm's GroupNormAct and alike
        zero = affine and not (isinstance(act, nn.Module) and not isinstance(act, _ZERO_MODULES))
        return Source(source.axes, source.nodes, np.full(source.nodes.shape, zero))

    def prelu(self, name: str, module: nn.PReLU, source: Value) -> Value:
        if not isinstance(source, Source):
            return None
        if module.weight.numel() > 1:
            if source.axes != (1,) or source.nodes.shape != (module.weight.numel(),):
                self.freeze(source, f"scaled by {name} along other dims")
                return None
            self.attach(f"{name}.weight", source.nodes)
        return source

    def attention(self, node: fx.Node, name: str, env: dict[fx.Node, Value]) -> Value:
        """``nn.MultiheadAttention``: self-attention reads its input's channels through the
        packed projection, whose rows are heads (a head's q, k and v rows leave together,
        with the out_proj columns that read them); compact replaces the module by one of
        fewer heads. Other uses (cross-attention, per-head masks, attention weights read,
        bias_k/v) keep its heads; it is counted and masked at weight granularity anyway."""
        layer, module = self.attention_of[name], self.modules[name]
        assert isinstance(module, nn.MultiheadAttention)
        rows = self.layer_rows(name, layer.out_channels)
        out_name = f"{name}.out_proj"
        meta = node.meta.get("tensor_meta")
        first = meta[0] if isinstance(meta, (tuple, list)) and meta else None
        shape = getattr(first, "shape", None)
        if out_name not in self.layers or shape is None:
            self.give_up(node, env, f"feeds attention {name}")
            self.freeze_nodes(rows, f"inside attention {name}")
            self.set_cols(name, None)
            return None
        out_rows = self.layer_rows(out_name, self.layers[out_name].out_channels)
        output = Source((len(shape) - 1,), out_rows, np.ones(out_rows.shape, dtype=bool))
        query, key, value = (arg(node, i, n) for i, n in enumerate(("query", "key", "value")))
        source = self.value(query, env)
        mask = arg(node, 5, "attn_mask")
        weights_read = bool(arg(node, 4, "need_weights", True)) and any(
            name_of(user) == "getitem" and user.args[1] == 1 and user.users for user in node.users
        )
        heads = rows.reshape(3, module.num_heads, module.head_dim).transpose(1, 0, 2)
        if (
            query is not key
            or key is not value
            or (isinstance(source, Source) and source.axes != (len(shape) - 1,))
            or module.bias_k is not None
            or module.add_zero_attn
            or weights_read
            or (isinstance(mask, fx.Node) and len(shape_of(mask) or ()) > 2)
        ):
            self.give_up(node, env, f"feeds attention {name} (not plain self-attention)")
            self.freeze_nodes(rows, f"inside attention {name} (not plain self-attention)")
            self.set_cols(name, None)
            self.set_cols(out_name, None)
            return (output, None)
        if isinstance(source, Source):
            self.check_zero(source, name)
        flat = heads.reshape(module.num_heads, -1)
        self.union(flat[:, :1], flat[:, 1:])  # a head's q, k and v rows: one element
        self.set_cols(name, source.nodes if isinstance(source, Source) else None)
        self.set_cols(out_name, rows[2 * module.embed_dim :])
        tokens = math.prod(shape[:-1])  # per sample: the example has one
        keys = shape[-2] if module.batch_first or len(shape) == 2 else shape[0]
        macs = 2 * tokens * keys * module.embed_dim  # q kᵀ and the weighted sum of v
        self.products.append((flat[:, 0].copy(), macs // module.num_heads))
        self.attentions[name] = flat[:, 0].copy()
        for layer_name, nodes in ((name, rows), (out_name, out_rows)):
            if not self.layers[layer_name].prunable:
                self.freeze_nodes(nodes, f"tied to {layer_name}, which is kept dense")
        return (output, None)

    # ----------------------------------------------------------------- calls

    def visit_call(self, node: fx.Node, name: str, env: dict[fx.Node, Value]) -> Value:
        args = node.args
        first = self.value(args[0], env) if args else None
        in_shape = shape_of(args[0]) if args else None
        out_shape = shape_of(node)
        if name == "getitem":
            return self.getitem(node, env)
        if name == "maybe_add_mask" and out_shape is not None:  # timm: x, or x + mask
            if not isinstance(arg(node, 1, "attn_mask"), fx.Node):
                return first
            name = "add"
        if name in ADD | MUL | DIV and out_shape is not None:
            return self.merge(node, name, env, out_shape)
        if isinstance(first, ParamVec):
            return self.param_op(node, name, first, out_shape)
        meta = node.meta.get("tensor_meta")
        if out_shape is None and not isinstance(meta, (tuple, list)):
            returns_none = node.meta.get("type") is type(None)  # reads its arguments only
            if (
                name not in ("size", "dim", "getattr", "numel")
                and not returns_none
                and any(isinstance(v, Source) for v in self.tensor_values(node, env))
            ):
                self.give_up(node, env, f"used by {name}, which returns no tensor")
            return None
        if name in SPLITS:
            return self.split(node, name, first, in_shape, env)
        if out_shape is None:
            self.give_up(node, env, f"used by {name}")
            return None
        if name in ZERO_CALLS:
            return self.elementwise(first, in_shape, out_shape, zero=True)
        if name in NONZERO_CALLS:
            return self.elementwise(first, in_shape, out_shape, zero=False)
        if name in POOL_CALLS:
            return self.pool(first, in_shape, out_shape, int(name[-2]), name)
        if name in RESHAPES or name == "expand" or name == "expand_as":
            return self.reshape(node, first, in_shape, out_shape, name, env=env)
        if name in PERMUTES:
            return self.permute(node, name, first, in_shape, out_shape)
        if name == "cat" or name == "concat" or name == "concatenate" or name == "stack":
            return self.concat(node, name, env, out_shape)
        if name in ("matmul", "bmm"):
            return self.matmul(node, env, out_shape)
        if name == "scaled_dot_product_attention":
            return self.attention_product(node, env, out_shape)
        if name in REDUCTIONS:
            return self.reduce(node, name, first, in_shape, out_shape)
        if name in ("softmax", "log_softmax"):
            dim = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
            return self.softmax(first, in_shape, dim, name)
        if name in ("clamp", "clip", "clamp_", "hardtanh_"):
            return self.clamp(node, first, in_shape, out_shape)
        if name == "pad":
            return self.pad(node, first, in_shape, out_shape)
        if name == "roll":
            dims = node.kwargs.get("dims", args[2] if len(args) > 2 else None)
            return self.along_other_dims(first, in_shape, out_shape, dims, name, zero=True)
        if name == "pow":
            exponent = node.kwargs.get("exponent", args[1] if len(args) > 1 else None)
            zero = isinstance(exponent, (int, float)) and exponent > 0
            return self.elementwise(first, in_shape, out_shape, zero=zero)
        if name == "layer_norm":
            normalized = args[1] if len(args) > 1 else node.kwargs.get("normalized_shape")
            count = len(normalized) if isinstance(normalized, (list, tuple)) else 1
            assert in_shape is not None
            mixed = set(range(len(in_shape) - count, len(in_shape)))
            return self.mixed(first, mixed, f"normalized by {name}")
        if name in ("group_norm", "local_response_norm"):
            assert in_shape is not None
            return self.mixed(first, set(range(1, len(in_shape))), f"normalized by {name}")
        if name in ("batch_norm", "instance_norm"):
            self.give_up(node, env, f"normalized by functional {name}")
            return None
        self.give_up(node, env, f"used by {name}")
        return None
