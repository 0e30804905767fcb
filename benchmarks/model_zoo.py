"""Model-zoo sweep (issue 11.6): does pruning work on the models people actually prune?

Run: ``.venv/bin/python benchmarks/model_zoo.py`` (the whole zoo, unattended; writes
``docs/model-zoo.md`` and ``docs/model-zoo.csv``), or ``--models resnet18,timm/ghostnet_100``
for a subset, ``--out DIR`` for another place, ``--resume`` to keep the models already
done in ``--work``.

The zoo: every torchvision classifier (``torchvision.models.list_models``) and a sample
of timm with a small variant of each family, random weights (seed 0), 1000 classes, a
batch of 2 random 64x64 images (a model that cannot take 64x64 gets its own default
size, and the row says so). Per model, one child process runs, each step under a time
limit so that a hang or a crash costs a row, never the sweep:

1. ``weight``: a :class:`~searchprune.problem.Problem` at weight granularity, sparsity
   0.5: layers found, the share of the model's parameters they hold, one sampled and
   repaired candidate scored.
2. ``channel``: the same at channel granularity with a FLOPs budget of 0.5: channel
   groups found (and how many are prunable), one candidate repaired and scored.
3. ``compact``: that candidate's compact model, as ``searchprune export --format
   compact`` builds it, checked against the masked model (a tolerance relative to the
   outputs' scale; beyond it, again in float64: ``check_models``), and its real FLOPs
   and parameters counted independently (``torch.utils.flop_counter.FlopCounterMode``
   taught CPU attention, parameter numel) next to the FLOPs and params fractions the
   problem's statistics claim. The serialization step (torch.export or TorchScript)
   is not part of the sweep.
4. ``torch-pruning``: Torch-Pruning's ``MagnitudePruner`` (L2 magnitude, 50% of the
   channels of every layer, the classifier ignored) on a fresh copy of the same model,
   as its README shows a new user; the pruned model's real FLOPs and params counted the
   same way.

Timings depend on the machine's load and are not reported; this is a correctness sweep.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# tests/zoo.py imports torchvision on this machine's CPU torch wheel (its CUDA build's
# compiled operators do not load there; classification models need none of them). The
# benchmark shares that helper with the tests, so tests/ goes on the import path.
sys.path.insert(0, str(REPO / "tests"))

import zoo  # noqa: E402

INPUT_SIZE = 64
BATCH = 2
NUM_CLASSES = 1000
TARGET = 0.5
HONEST = 0.02  # claimed and real fractions closer than this count as a match
STEP_TIMEOUT_S = 150
TIMM_PREFIX = "timm/"
HAND_WRITTEN = "<!-- hand-written below: benchmarks/model_zoo.py keeps it -->"
"""From this line on, docs/model-zoo.md is prose (why each miss happens) kept across runs."""
SKIPPED = {
    name: "skipped: too large for this 24 GiB 2-core machine"
    for name in ("regnet_y_128gf", "vit_h_14")
}
# small variants of the timm families people prune: ResNet/ResNeXt/SE/Res2Net and their
# kin, the EfficientNet/MobileNet line, RegNet, RepVGG, DenseNet, ConvNeXt,
# ViT/DeiT/Swin, MLP-Mixer/gMLP/ResMLP, NFNet, hybrids (MobileViT, LeViT, EfficientFormer)
TIMM_SAMPLE = (
    "resnet10t",
    "resnet26d",
    "seresnet18",
    "seresnext26d_32x4d",
    "resnext26ts",
    "res2net50_14w_8s",
    "skresnet18",
    "ecaresnet26t",
    "cspresnet50",
    "dla34",
    "hrnet_w18_small",
    "efficientnet_b0",
    "tf_efficientnet_lite0",
    "efficientnetv2_rw_t",
    "mixnet_s",
    "lcnet_050",
    "rexnet_100",
    "mobilenetv3_small_050",
    "mobilenetv3_large_100",
    "mobilenetv4_conv_small",
    "ghostnet_100",
    "regnetx_002",
    "regnety_002",
    "repvgg_a0",
    "mobileone_s0",
    "densenetblur121d",
    "convnext_atto",
    "convnextv2_atto",
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
    "mixer_s16_224",
    "gmlp_ti16_224",
    "resmlp_12_224",
    "levit_128s",
    "poolformer_s12",
    "efficientformer_l1",
    "mobilevit_xxs",
    "edgenext_xx_small",
    "nf_regnet_b0",
    "nf_resnet26",
)
NOT_RUN = "-"  # a step not run because the one it needs failed
STEPS = ("build", "weight", "channel", "compact", "torch-pruning")
COLUMNS = (
    "model",
    "input",
    "params_m",
    "gflops",
    "layers",
    "prunable_layers",
    "params_in_layers",
    "weight",
    "weight_sparsity",
    "groups",
    "prunable_groups",
    "traced",
    "channel",
    "claimed_flops",
    "claimed_params",
    "compact",
    "compact_rel_diff",
    "real_flops",
    "real_params",
    "tp",
    "tp_flops",
    "tp_params",
    "seconds",
)


# ------------------------------------------------------------------- the models
def zoo_models() -> list[str]:
    """Every torchvision classifier, then the timm sample (``timm/<name>``)."""
    torchvision = zoo.import_torchvision()
    names = torchvision.models.list_models(module=torchvision.models)
    return [*names, *(TIMM_PREFIX + name for name in TIMM_SAMPLE)]


def build_model(model_id: str, size: int) -> Any:
    """The model ``model_id`` with random weights (seed 0) for ``size`` x ``size`` inputs,
    made realistic (:func:`zoo.make_realistic`: no all-zero head, BatchNorm with
    non-trivial statistics and shifts).

    ViT-style models take their image size as an argument (torchvision's
    ``image_size``, timm's ``img_size``); the rest are built as they are.
    """
    import torch

    torch.manual_seed(0)
    if model_id.startswith(TIMM_PREFIX):
        timm = zoo.import_timm()
        name = model_id.removeprefix(TIMM_PREFIX)
        try:
            model = timm.create_model(name, num_classes=NUM_CLASSES, img_size=size)
        except TypeError:  # the architecture has no img_size argument
            torch.manual_seed(0)
            model = timm.create_model(name, num_classes=NUM_CLASSES)
    else:
        torchvision = zoo.import_torchvision()
        options = {"image_size": size} if model_id.startswith("vit_") else {}
        model = torchvision.models.get_model(
            model_id, weights=None, num_classes=NUM_CLASSES, **options
        )
    return zoo.make_realistic(model)


def default_size(model: Any) -> int:
    """The input size a model was designed for: timm's config, else ImageNet's 224
    (299 for Inception v3)."""
    config = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in config:
        return int(config["input_size"][-1])
    return 299 if type(model).__name__ == "Inception3" else 224


# ------------------------------------------------------------------ counting
def real_counts(model: Any, example: Any) -> tuple[int, int]:
    """FLOPs of one forward pass on ``example`` (:func:`zoo.count_flops`: matmuls,
    convolutions, attention) and the number of parameters, counted on the module as it
    is, independently of searchprune's cost model."""
    return zoo.count_flops(model, example), sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ the child
class StepTimeout(Exception):
    """A step ran past its time limit."""


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise :class:`StepTimeout` in this (main) thread after ``seconds``."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise StepTimeout(f"timeout: over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def cause(error: BaseException) -> str:
    """``Type: first line of the message`` and the deepest searchprune or torch_pruning
    frame it came from."""
    if isinstance(error, StepTimeout):
        return str(error)
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    frozen = text.find("Channels that cannot be pruned:")  # a budget error's reasons: kept
    kept = f"{text[: min(frozen, 240)].rstrip()} {text[frozen : frozen + 360]}"
    text = kept if frozen >= 0 else text[:240]
    frames = traceback.extract_tb(error.__traceback__)
    packages = re.compile(r"/(searchprune|torch_pruning)/")
    ours = [frame for frame in frames if packages.search(frame.filename)]
    if ours:
        match = packages.search(ours[-1].filename)
        assert match is not None
        text += f" (at {ours[-1].filename[match.start() + 1 :]}:{ours[-1].lineno})"
    return text


class Record:
    """One model's results, written to ``path`` (atomically) after every step."""

    def __init__(self, path: Path, model_id: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"model": model_id, "steps": {}}

    def step(self, name: str, status: str, error: str | None = None, **values: Any) -> None:
        self.data["steps"][name] = {"status": status, "error": error}
        self.data.update(values)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def _run_step(
    record: Record, name: str, seconds: int, body: Callable[[], dict[str, Any]]
) -> dict[str, Any] | None:
    """Run ``body`` under the time limit; record ``ok`` and its values, or the cause."""
    start = time.perf_counter()
    try:
        with time_limit(seconds):
            values = body()
    except Exception as error:
        status = "timeout" if isinstance(error, StepTimeout) else "fail"
        record.step(name, status, cause(error), **{f"{name}_s": time.perf_counter() - start})
        return None
    record.step(name, "ok", **values, **{f"{name}_s": time.perf_counter() - start})
    return values


def run_child(model_id: str, path: Path, seconds: int) -> None:
    """Every step for one model, in this process (see the module docstring)."""
    import numpy as np
    import torch

    # searchprune's imports are made in the steps that need them: an API that moved
    # fails those steps, with the cause, not the whole row
    torch.set_num_threads(1)
    record = Record(path, model_id)
    state: dict[str, Any] = {}

    def build() -> dict[str, Any]:
        size = INPUT_SIZE
        model = build_model(model_id, size).eval()
        try:
            real_counts(model, torch.randn(1, 3, size, size))
        except Exception:  # too small for this architecture: its own size
            size = default_size(model)
            model = build_model(model_id, size).eval()
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(BATCH, 3, size, size, generator=generator)
        targets = torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator)
        flops, params = real_counts(model, inputs[:1])
        state.update(size=size, data=(inputs, targets), flops=flops, params=params)
        return {"input": size, "params_m": params / 1e6, "gflops": flops / 1e9}

    def problem(budget: tuple[str, float], granularity: str) -> tuple[Any, Any, Any]:
        """A problem over a fresh copy of the model, and one repaired candidate's genome
        and evaluation."""
        from searchprune.core.budget import Budget
        from searchprune.problem import Problem
        from searchprune.tasks.base import Task

        model = build_model(model_id, state["size"]).eval()
        task = Task(model=model, train=state["data"], val=state["data"], name=model_id)
        built = Problem(task, budget=Budget(*budget), granularity=granularity)
        space = built.space
        genome = space.repair(space.sample(np.random.default_rng(0), 1))
        evaluation = built.score(genome, [model_id])[0]
        if evaluation.error:
            raise RuntimeError(f"evaluation failed: {evaluation.error}")
        return built, genome, evaluation

    def weight() -> dict[str, Any]:
        built, _, evaluation = problem(("sparsity", TARGET), "weight")
        in_layers = sum(layer.params for layer in built.layers)
        return {
            "layers": len(built.layers),
            "prunable_layers": sum(layer.prunable for layer in built.layers),
            "params_in_layers": in_layers / state["params"],
            "groups": len(built.graph.groups),
            "prunable_groups": len(built.graph.prunable_groups()),
            "traced": built.graph.traced,
            "weight_sparsity": evaluation.metrics["sparsity"],
        }

    def channel() -> dict[str, Any]:
        built, genome, evaluation = problem(("flops", TARGET), "channel")
        state.update(problem=built, genome=genome)
        claimed = evaluation.metrics["flops_fraction"]
        if claimed > TARGET + 1e-6:
            raise RuntimeError(f"budget not met: FLOPs fraction {claimed:.3f} > {TARGET}")
        return {
            "claimed_flops": claimed,
            "claimed_params": evaluation.metrics["params_fraction"],
        }

    def compact_export() -> dict[str, Any]:
        from searchprune.kernels import compact
        from searchprune.kernels.check import check_models

        built, genome = state["problem"], state["genome"]
        masks = built.space.decode(genome[0])
        batch = built.val.first_batch()[0]
        copy_of_scored = built.masked_copy(masks)
        with built.masked(masks) as scored, torch.inference_mode():
            expected = scored(batch)
        module = compact(copy_of_scored, masks, built.layers, built.graph).eval()
        flops, params = real_counts(module, batch[:1])
        values = {
            "real_flops": flops / state["flops"],
            "real_params": params / state["params"],
        }
        record.data.update(values)
        worst = check_models(module, built.masked_copy(masks).eval(), batch, "the compact model")
        values["compact_rel_diff"] = worst / float(expected.abs().max())
        record.data.update(values)
        return values

    def torch_pruning() -> dict[str, Any]:
        import torch_pruning as tp

        model = build_model(model_id, state["size"]).eval()
        example = state["data"][0][:1]
        classifier = [
            module
            for module in model.modules()
            if (isinstance(module, torch.nn.Linear) and module.out_features == NUM_CLASSES)
            or (isinstance(module, torch.nn.Conv2d) and module.out_channels == NUM_CLASSES)
        ]
        pruner = tp.pruner.MagnitudePruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=TARGET,
            ignored_layers=classifier,
        )
        pruner.step()
        flops, params = real_counts(model, example)
        return {"tp_flops": flops / state["flops"], "tp_params": params / state["params"]}

    if _run_step(record, "build", seconds, build) is None:
        return
    _run_step(record, "weight", seconds, weight)
    if _run_step(record, "channel", seconds, channel) is not None:
        _run_step(record, "compact", seconds, compact_export)
    else:
        record.step("compact", NOT_RUN)
    state.pop("problem", None)
    _run_step(record, "torch-pruning", seconds, torch_pruning)
    record.data["done"] = True
    record.save()


# ----------------------------------------------------------------- the parent
def run_model(model_id: str, work: Path, seconds: int) -> dict[str, Any]:
    """Run one model's child process; return its record, with the child's end when it
    died (a crash, an out-of-memory kill, the overall time limit)."""
    path = work / f"{model_id.replace('/', '__')}.json"
    if model_id in SKIPPED:
        data: dict[str, Any] = {"model": model_id, "skipped": SKIPPED[model_id], "done": True}
        path.write_text(json.dumps(data))
        return data
    path.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--child", model_id, "--result", str(path)]
    command += ["--timeout", str(seconds)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    try:
        finished = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=seconds * len(STEPS) + 60
        )
        end = None if finished.returncode == 0 else _child_end(finished.returncode, finished.stderr)
    except subprocess.TimeoutExpired:
        end = f"killed: the whole model ran past {seconds * len(STEPS) + 60} s"
    data = json.loads(path.read_text()) if path.exists() else {"model": model_id, "steps": {}}
    if end is not None:
        pending = next((step for step in STEPS if step not in data["steps"]), None)
        if pending is not None:
            data["steps"][pending] = {"status": "crash", "error": end}
    data["seconds"] = round(time.perf_counter() - start, 1)
    data["done"] = True
    path.write_text(json.dumps(data, indent=1))
    return data


def _child_end(returncode: int, stderr: str) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"child killed by {name}{hint}"
    last = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or ["?"]
    return f"child exited with status {returncode}: {last[0][:200]}"


# ---------------------------------------------------------------- the report
def status(record: dict[str, Any], step: str) -> str:
    if "skipped" in record:
        return "skip"
    return str(record["steps"].get(step, {}).get("status", NOT_RUN))


def row(record: dict[str, Any]) -> dict[str, Any]:
    """The CSV row of one record."""
    values = {key: record.get(key, "") for key in COLUMNS}
    values.update(
        weight=status(record, "weight"),
        channel=status(record, "channel"),
        compact=status(record, "compact"),
        tp=status(record, "torch-pruning"),
    )
    return values


def _fraction(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "–"


def _pair(record: dict[str, Any], flops: str, params: str) -> str:
    if not isinstance(record.get(flops), float):
        return "–"
    return f"{_fraction(record.get(flops))} / {_fraction(record.get(params))}"


def normalized(error: str) -> str:
    """An error message with its numbers, shapes and quoted names blanked, so the same
    cause on different models counts once."""
    text = re.sub(r"\(at [^)]*\)", "", error)
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"\[[^\]]*\]|\([\d, ]*\)", "[…]", text)
    return re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", text).strip()[:160]


def failures(records: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``(model, step, cause)`` for every failed, timed-out or crashed step and skip."""
    found = []
    for record in records:
        if "skipped" in record:
            found.append((record["model"], "all", record["skipped"]))
            continue
        for step in STEPS:
            entry = record["steps"].get(step)
            if entry and entry["status"] not in ("ok", NOT_RUN):
                found.append((record["model"], step, entry["error"] or entry["status"]))
    return found


def markdown(records: list[dict[str, Any]], header: str) -> str:
    """The table, the summary counts, the causes by count and every failure."""
    ran = [r for r in records if status(r, "build") == "ok"]
    count = {step: sum(status(r, step) == "ok" for r in ran) for step in STEPS}
    tp_ok = {r["model"] for r in ran if status(r, "torch-pruning") == "ok"}
    ours_ok = {r["model"] for r in ran if status(r, "compact") == "ok"}
    counted = [r for r in ran if isinstance(r.get("real_flops"), float)]
    honest = {
        kind: sum(abs(r[f"claimed_{kind}"] - r[f"real_{kind}"]) <= HONEST for r in counted)
        for kind in ("flops", "params")
    }
    lines = [
        "# Model zoo: searchprune and Torch-Pruning on torchvision and timm",
        "",
        header,
        "",
        "To prune one of these models with your weights and images, use the `torchvision` "
        "or `timm` task: `configs/torchvision_imagefolder.yaml` is a commented example, and "
        "docs/tasks.md describes the options.",
        "",
        "## Summary",
        "",
        f"- models: {len(records)} ({len(records) - len(ran)} not run: skipped or not built)",
        f"- built and ran forward: {len(ran)}",
        f"- weight granularity, sparsity 0.5, one evaluation: {count['weight']} of {len(ran)}",
        f"- channel granularity, FLOPs 0.5, repaired and evaluated: {count['channel']} of "
        f"{len(ran)}",
        f"- compact export output-equal (export's own check): {count['compact']} of {len(ran)}",
        f"- claimed fractions within {HONEST} of the compact model's real counts: FLOPs "
        f"{honest['flops']}, params {honest['params']}, of {len(counted)} compact models",
        f"- Torch-Pruning (MagnitudePruner, 50% channels) ran: {count['torch-pruning']} of "
        f"{len(ran)}",
        f"- compact output-equal on the models Torch-Pruning handles: "
        f"{len(ours_ok & tp_ok)} of {len(tp_ok)}; searchprune only: {len(ours_ok - tp_ok)}, "
        f"Torch-Pruning only: {len(tp_ok - ours_ok)}",
        "",
        "## Failure causes, by the number of models hit",
        "",
        "| models | step | cause |",
        "|---:|---|---|",
    ]
    found = failures(records)
    by_cause = Counter((step, normalized(text)) for _, step, text in found)
    examples: dict[tuple[str, str], str] = {}
    for model, step, text in found:
        examples.setdefault((step, normalized(text)), model)
    for (step, text), n in by_cause.most_common():
        lines.append(f"| {n} | {step} | {text} (e.g. {examples[step, text]}) |")
    lines += [
        "",
        "## Per model",
        "",
        "Fractions are of the dense model. *claimed*: the problem's statistics for the "
        "candidate; *real*: the compact model counted with FlopCounterMode and its "
        "parameters; *layers*: found (prunable); *groups*: channel groups (prunable); "
        "*in layers*: share of the parameters held by the layers found.",
        "",
        "| model | input | params M | layers | in layers | weight 0.5 | groups | channel "
        "FLOPs 0.5 | claimed FLOPs / params | compact equal | real FLOPs / params | "
        "Torch-Pruning | TP real FLOPs / params |",
        "|---|---:|---:|---:|---:|---|---:|---|---|---|---|---|---|",
    ]
    for record in records:
        layers = f"{record['layers']} ({record['prunable_layers']})" if "layers" in record else "–"
        groups = f"{record['groups']} ({record['prunable_groups']})" if "groups" in record else "–"
        params = f"{record['params_m']:.1f}" if "params_m" in record else "–"
        lines.append(
            f"| {record['model']} | {record.get('input', '–')} | {params} | {layers} | "
            f"{_fraction(record.get('params_in_layers'))} | {status(record, 'weight')} | "
            f"{groups} | {status(record, 'channel')} | "
            f"{_pair(record, 'claimed_flops', 'claimed_params')} | {status(record, 'compact')} | "
            f"{_pair(record, 'real_flops', 'real_params')} | "
            f"{status(record, 'torch-pruning')} | {_pair(record, 'tp_flops', 'tp_params')} |"
        )
    lines += ["", "## Every failure", ""]
    lines += [f"- {model} ({step}): {text}" for model, step, text in found]
    return "\n".join(lines) + "\n"


def git_revision() -> str:
    """``git describe --always --dirty`` of this checkout, or ``?`` outside git."""
    described = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return described.stdout.strip() or "?"


def versions(revision: str) -> str:
    """searchprune's revision and the versions of the libraries the sweep used."""

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    packages = ("torch", "torchvision", "timm", "torch-pruning")
    return f"searchprune {revision}, " + ", ".join(f"{p} {version(p)}" for p in packages)


def write_report(records: list[dict[str, Any]], out: Path, seconds: int, revision: str) -> None:
    """``out`` (markdown) and the CSV beside it, each written through a temporary file."""
    busy = sum(record.get("seconds", 0.0) for record in records)
    load = os.getloadavg()[2]
    header = (
        f"Written by `benchmarks/model_zoo.py` ({versions(revision)}; "
        f"{time.strftime('%Y-%m-%d')}). "
        f"Random weights, {NUM_CLASSES} classes, batch {BATCH}, {INPUT_SIZE}x{INPUT_SIZE} "
        f"inputs unless *input* says otherwise; {seconds} s per step. The per-model "
        f"processes ran {busy / 60:.0f} min in all; the load average was {load:.1f} on "
        f"{os.cpu_count()} cores at the end (timeouts depend on the load). See the script's "
        "docstring for what each step does."
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = out.read_text().partition(HAND_WRITTEN)[1:] if out.exists() else ("", "")
    tmp = out.with_suffix(".tmp")
    tmp.write_text(markdown(records, header) + "".join(kept))
    os.replace(tmp, out)
    table = out.with_suffix(".csv")
    tmp = table.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(row(record) for record in records)
    os.replace(tmp, table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated subset (timm models as timm/NAME)")
    parser.add_argument("--timeout", type=int, default=STEP_TIMEOUT_S, help="seconds per step")
    parser.add_argument(
        "--out", type=Path, default=REPO / "docs" / "model-zoo.md", help="the markdown; CSV beside"
    )
    parser.add_argument(
        "--work", type=Path, default=REPO / "runs" / "model-zoo", help="per-model JSON results"
    )
    parser.add_argument("--jobs", type=int, default=2, help="models run at the same time")
    parser.add_argument("--resume", action="store_true", help="keep the models done in --work")
    parser.add_argument(
        "--revision", help="searchprune's revision for the header (default: git describe)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, args.result, args.timeout)
        return 0
    models = args.models.split(",") if args.models else zoo_models()
    args.work.mkdir(parents=True, exist_ok=True)

    def one(model_id: str) -> dict[str, Any]:
        path = args.work / f"{model_id.replace('/', '__')}.json"
        if args.resume and path.exists():
            kept: dict[str, Any] = json.loads(path.read_text())
            if kept.get("done"):
                return kept
        record = run_model(model_id, args.work, args.timeout)
        steps = " ".join(f"{step}={status(record, step)}" for step in STEPS)
        print(f"{model_id}: {steps} ({record.get('seconds', 0):.0f} s)", flush=True)
        return record

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        records = list(pool.map(one, models))
    write_report(records, args.out, args.timeout, args.revision or git_revision())
    print(f"wrote {args.out} and {args.out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
