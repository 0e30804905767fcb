"""Tracing a model with :mod:`torch.fx` for :mod:`searchprune.core.graph`: stopping at
weight layers and norms, going into torch.nn containers, and keeping whole (with a
notice) the submodules whose code fx cannot follow."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from searchprune.core.channels import MIXING_NORMS, NORM_TYPES
from searchprune.core.layers import CallRecorder, LayerInfo


class _LeafTracer(fx.Tracer):
    """fx tracer that stops at weight layers, norms and ``stop`` modules, goes into
    torch.nn containers (``nn.TransformerEncoderLayer``) other tracers stop at, and
    traces a ``sequential`` module as the chain of submodule calls it was seen making."""

    def __init__(self, stop: set[str], sequential: dict[str, list[str]]) -> None:
        super().__init__()
        self.stop = stop
        self.sequential = sequential

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.stop:
            return True
        if isinstance(m, (*NORM_TYPES, *MIXING_NORMS, nn.MultiheadAttention)):
            return True
        if m.__module__.startswith("torch.nn") and next(m.children(), None) is not None:
            return False
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        chain = self.sequential.get(self.path_of_module(m))
        if chain is None:
            return super().call_module(m, forward, args, kwargs)
        x = args[0]
        for name in chain:
            child = self.root.get_submodule(name)
            x = self.call_module(child, child.forward, (x,), {})
        return x


def _chain_of_calls(model: nn.Module, name: str, example_input: Tensor) -> list[str] | None:
    """The submodules module ``name`` calls, in order, when all it does is pass its input
    through them one after the other (each call's only tensor argument the previous
    call's output, other arguments ``None`` or ``False``); else ``None``."""
    target = model.get_submodule(name)
    calls: list[list[Any]] = []  # [name, input, output]
    seen: dict[str, Any] = {"inside": 0, "depth": 0, "calls": 0, "plain": True}

    def enter(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.update(inside=seen["inside"] + 1, calls=seen["calls"] + 1, input=args[:1])

    def leave(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        seen.update(inside=seen["inside"] - 1, output=output)

    def sub_enter(sub: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if seen["inside"] and seen["depth"] == 0:
                extra = [*args[1:], *kwargs.values()]
                seen["plain"] &= len(args) >= 1 and all(v is None or v is False for v in extra)
                calls.append([sub, args[0] if args else None, None])
            seen["depth"] += 1

        return hook

    def sub_leave(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        seen["depth"] -= 1
        if seen["inside"] and seen["depth"] == 0:
            calls[-1][2] = output

    handles = [
        target.register_forward_pre_hook(enter, with_kwargs=True),
        target.register_forward_hook(leave, with_kwargs=True),
    ]
    for sub, module in target.named_modules(prefix=name):
        if sub != name:
            handles.append(module.register_forward_pre_hook(sub_enter(sub), with_kwargs=True))
            handles.append(module.register_forward_hook(sub_leave, with_kwargs=True))
    try:
        with torch.no_grad():
            model(example_input)
    except Exception:  # the hooks' bookkeeping must not change what the caller sees
        return None
    finally:
        for handle in handles:
            handle.remove()
    if seen["calls"] != 1 or not calls or not seen["plain"]:
        return None
    links = [seen["input"][0] if seen["input"] else None, *[c[2] for c in calls]]
    inputs = [*[c[1] for c in calls], seen["output"]]
    if all(isinstance(a, Tensor) and a is b for a, b in zip(links, inputs, strict=True)):
        return [c[0] for c in calls]
    return None


def trace_model(
    model: nn.Module, example_input: Tensor, layers: list[LayerInfo], recorder: CallRecorder
) -> tuple[fx.GraphModule, list[str]]:
    """Trace ``model``. A submodule whose code fx cannot follow (data-dependent control
    flow) is traced as the chain of submodule calls it makes when it only chains them
    (a forward-hook trace), else kept whole (its channels frozen); both are named in the
    returned notices."""
    stop = {layer.name for layer in layers}
    opaque: list[str] = []
    sequential: dict[str, list[str]] = {}
    notices: list[str] = []
    while True:
        tracer = _LeafTracer(stop | set(opaque), sequential)
        try:
            graph = tracer.trace(model)
            break
        except Exception as error:  # fx raises many kinds of errors on dynamic code
            stack = list(tracer.module_stack.values())
            culprit = stack[-1][0] if stack else ""
            if not culprit or culprit in opaque or len(opaque) + len(sequential) >= 64:
                raise
            why = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
            kind = type(model.get_submodule(culprit)).__name__
            chain = (
                None if culprit in sequential else _chain_of_calls(model, culprit, example_input)
            )
            if chain is not None:
                sequential[culprit] = chain
                notices.append(
                    f"{culprit} ({kind}) could not be traced ({why}); traced as the chain of "
                    f"the {len(chain)} submodules it calls"
                )
                continue
            opaque.append(culprit)
            notices.append(
                f"{culprit} ({kind}) could not be traced ({why}); its channels are frozen"
            )
    traced = fx.GraphModule(tracer.root, graph)
    traced.eval()
    with torch.no_grad(), recorder:
        ShapeProp(traced).propagate(example_input)
    return traced, notices
