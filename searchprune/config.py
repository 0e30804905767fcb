"""The YAML config: validated with pydantic, with errors that name the key and the fix.

Every section but ``task``, ``budget`` and ``searcher`` (or ``method``) has defaults; a
bare string is shorthand for ``{name: ...}``. Every key is listed in docs/config.md,
generated from the field descriptions below by ``make docs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from searchprune.core.budget import BUDGET_KINDS, Budget
from searchprune.core.masks import parse_granularity
from searchprune.registry import SpecError, UnknownNameError, unknown_name_message


class ConfigError(SpecError):
    """A config that cannot be run; the message names the key and the fix."""


MAX_SEED = 2**32 - 1  # the largest seed numpy.random.seed takes
MAX_POPULATION = 1_000_000


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping that gives one key twice (YAML itself would keep the last)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    raise DuplicateKeyError(
                        f"key {key!r} is given twice (lines {first_line[key]} and {line}); keep one"
                    )
                first_line[key] = line
            except TypeError:  # an unhashable key: the base loader reports it
                break
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML like ``yaml.safe_load``, refusing duplicate keys.

    :raises yaml.YAMLError: for text that is not YAML, or a key given twice in a mapping
        (:class:`DuplicateKeyError`, naming the key and both lines).
    """
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds plain data only


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class TaskConfig(_Section):
    """What to prune: a built-in task name or ``"package.module:factory"`` returning a
    ``Task``; other keys go to the factory as keyword options (the built-in tasks and
    their options: docs/tasks.md)."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(
        description="a built-in task (digits-mlp, digits-cnn, digits-resnet, mnist1d-mlp, "
        "mnist1d-cnn, mnist1d-resnet, digits-deepcnn), torchvision or timm (a classifier "
        'of either library on images on disk), or "pkg.module:factory" returning a Task; '
        "`searchprune list` names them"
    )
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="seed the built-in model is trained with (and its val split drawn with)",
    )

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SpaceConfig(_Section):
    """The search space: what a genome encodes and how elements are ranked inside a layer;
    other keys are the space's own settings (``reference-ratios``: ``width`` (default
    0.2); ``depth-schedule``: ``knots`` (default 5)), a key the space does not take is an
    error naming its settings."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(
        "layer-ratios",
        description="layer-ratios: one pruning ratio per layer (weight granularity) or per "
        "channel group (channel granularity), elements ranked by the criterion; binary: one "
        "keep-bit per channel (channel granularity only); reference-ratios: ratios within "
        "`width` of the criterion's global allocation; depth-schedule: `knots` ratios over "
        "depth, interpolated per unit",
    )
    granularity: str = Field(
        "weight",
        description="weight or channel (unit is the same as channel for Linear layers); n:m "
        "masks (searchprune.core.masks.nm_mask, e.g. 2:4 for the GPU kernels) exist in MaskSet "
        "but not yet in spaces",
    )
    criterion: str = Field(
        "magnitude",
        description="how elements are ranked inside a layer (docs/methods.md#criteria), or "
        '"pkg.module:Name"',
    )
    min_ratio: float = Field(
        0.0, ge=0.0, le=1.0, description="lower bound on every unit's pruning ratio"
    )
    max_ratio: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="upper bound on every unit's pruning ratio (default 0.99 at weight, 0.9 at "
        "channel granularity); at least one element per layer is always kept",
    )
    layer_bounds: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="per-layer [min, max] ratio, e.g. {fc1: [0, 0.5]}"
    )
    exclude_output: bool = Field(True, description="keep the last layer dense")
    exclude: list[str] = Field(default_factory=list, description="more layers to keep dense")

    @field_validator("granularity")
    @classmethod
    def _granularity(cls, value: str) -> str:
        return parse_granularity(value)

    @property
    def options(self) -> dict[str, Any]:
        """The space's own settings (the keys beyond the common ones)."""
        return dict(self.model_extra or {})

    @field_validator("layer_bounds")
    @classmethod
    def _layer_bounds(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (low, high) in value.items():
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(
                    f"space.layer_bounds.{name}: [{low}, {high}] is not a [min, max] pruning "
                    "ratio with 0 <= min <= max <= 1"
                )
        return value


class FitnessConfig(_Section):
    """How a candidate is scored on the val split: a built-in fitness name or
    ``"package.module:function"``; other keys are passed to the function as keyword
    options (``latency_aware``: ``target_ms``, ``weight`` (default -0.07)); a key the
    function does not take is an error naming its options. The functions and their
    options: docs/methods.md#fitness-functions."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(
        "accuracy",
        description="accuracy, neg_loss, r_err (AMC's -error), r_flops (AMC's -error * log "
        "FLOPs), latency_aware (MnasNet's accuracy x (latency/target)^weight), or "
        '"pkg.module:function"',
    )
    predict_latency: bool = Field(
        False,
        description="measure a latency curve and give every candidate a predicted "
        "ctx.stats['latency_ms'] (implied by latency_aware and latency_ms budgets)",
    )
    penalty: float | None = Field(
        None,
        description="score given to a candidate whose fitness raises or returns NaN (a "
        "finite number); without it, the run stops with an error naming the candidate",
    )
    bn_samples: int | None = Field(
        None,
        ge=0,
        description="train samples used to recalibrate BatchNorm statistics before scoring "
        "each candidate (EagleEye; default 512 with BatchNorm, else 0)",
    )

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SearcherConfig(_Section):
    """The searcher and its own settings; each searcher's settings come from its ``Params``
    class and are listed under "Searcher settings" in docs/config.md (what they do:
    docs/methods.md#searchers)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str = Field(
        description='ga, pso, sa, nsga2, cmaes, amc, random, or "pkg.module:Class"; '
        "--set searcher.name=pso switches searcher on any config"
    )

    @model_validator(mode="after")
    def _population(self) -> SearcherConfig:
        population = (self.model_extra or {}).get("population")
        if isinstance(population, int) and population > MAX_POPULATION:
            raise ValueError(
                f"searcher.population: at most {MAX_POPULATION:,} genomes per round "
                f"(got {population:,}); a round is held in memory at once"
            )
        return self


class MethodConfig(_Section):
    """A baseline or training-time method run instead of a searcher; other keys are the
    method's settings (training-time methods: ``epochs``, ``lr``, ...; every method and its
    settings: docs/methods.md#baselines)."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(
        description="a one-shot method such as magnitude-global, or a training-time method "
        "such as gradual-magnitude"
    )

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class FidelityConfig(BaseModel):
    """Multi-fidelity scoring: every candidate of a batch on the first ``shard`` of the val
    split, only the best ``promote`` share of the batch on all of it (one rung of
    successive halving); the run's best is always one scored on all of it."""

    model_config = ConfigDict(extra="forbid")
    shard: float = Field(0.25, gt=0.0, lt=1.0, description="share of the val split scored first")
    promote: float = Field(
        0.25, gt=0.0, le=1.0, description="share of each batch scored again on all of val"
    )


class EvaluatorConfig(_Section):
    """Where candidates are scored: in process, or on Ray actors (docs/ray.md)."""

    name: Literal["local", "ray"] = Field("local", description="local (in process) or ray (actors)")
    device: str = Field(
        "cpu", description="torch device of the model during search (cpu, cuda, cuda:1, mps)"
    )
    threads: int = Field(
        1,
        ge=1,
        description="torch threads per evaluating process (1 is fastest and steadiest for "
        "these small models on 2 cores)",
    )
    cache: bool = Field(True, description="answer genomes already scored from a cache")
    channels_last: bool = Field(
        True,
        description="run models with Conv2d in NHWC memory format (2.8x faster on the digits "
        "CNN here)",
    )
    actors: int = Field(2, ge=1, description="ray: actors holding the problem")
    num_cpus: float = Field(1.0, gt=0, description="ray: CPUs per actor")
    num_gpus: float = Field(0.0, ge=0, description="ray: GPUs per actor (fractions share a GPU)")
    address: str | None = Field(
        None, description="ray: cluster address (default RAY_ADDRESS or a local Ray)"
    )
    chunk: int | None = Field(
        None, ge=1, description="ray: genomes per call (default: about 50 ms of work per call)"
    )
    max_deaths: int = Field(
        3,
        ge=1,
        description="ray: a dead actor is replaced and its chunk rerun; a chunk that kills this "
        "many actors stops the run with an error naming its candidates",
    )
    connect_timeout_s: float = Field(
        30.0,
        gt=0,
        description="ray: how long to wait for the cluster at evaluator.address before the run "
        "stops with an error naming it",
    )
    fidelity: FidelityConfig | None = Field(
        None,
        description="multi-fidelity scoring, e.g. {shard: 0.25, promote: 0.25}: each batch on "
        "the first `shard` of val (and of the BatchNorm calibration samples), the best "
        "`promote` share of it (at least one) again on all of val; the others keep their "
        "shard fitness (history: fidelity < 1) and are never the run's best; with ray, per "
        "chunk (docs/compare-deep.md)",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        import torch  # only when a config is validated: listing names stays light

        try:
            torch.device(value)
        except (RuntimeError, ValueError):
            raise ValueError(
                f"{value!r} is not a torch device; use cpu, cuda, cuda:N or mps"
            ) from None
        return value


class RunConfig(_Section):
    """When the search stops, and its seed."""

    max_evals: int = Field(
        1000,
        ge=1,
        description="evaluations the search may spend, counted as run.count says",
    )
    count: Literal["unique", "all"] = Field(
        "unique",
        description="unique: max_evals counts distinct candidates scored (a repeat, answered "
        "by the cache, is free and marked cached in the history; searchers redraw repeats "
        "where they can); all: every candidate proposed counts, repeats included",
    )
    max_repeat_rounds: int = Field(
        50,
        ge=1,
        description="stop (with a message in the summary) after this many rounds in a row "
        "that scored no new candidate: the space is (nearly) exhausted",
    )
    max_seconds: float | None = Field(None, gt=0, description="stop after this wall time")
    target_fitness: float | None = Field(
        None, description="stop once the best fitness reaches this value"
    )
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="seed of the search, 0 to 2**32 - 1; the same seed gives the same result "
        "on one machine",
    )
    progress: bool | None = Field(
        None,
        description="progress bar with the best fitness so far; default: on when stderr is "
        "a terminal, off in logs and pipes",
    )


class SelectionConfig(_Section):
    """Picking the best without overfitting val: the ``top_k`` candidates with the best
    val fitness are scored again on a selection split of ``samples`` train samples (after
    the BatchNorm calibration ones; never test), and the one with the best fitness over
    val and selection samples together is the run's best (the summary's ``selection``
    tells whether that changed the pick)."""

    top_k: int = Field(
        0, ge=0, description="candidates re-scored before the pick; 0 picks the val best"
    )
    samples: int = Field(1000, ge=1, description="train samples in the selection split")


class FinetuneConfig(_Section):
    """Fine-tuning of the best mask and of each baseline's, with the mask held fixed."""

    epochs: int = Field(
        0,
        ge=0,
        description="passes over the train split (Adam); 0 = no fine-tuning; the report gives "
        "val/test accuracy before and after",
    )
    lr: float = Field(1e-3, gt=0, description="Adam's learning rate")
    batch_size: int = Field(64, ge=1, description="mini-batch size")
    weight_decay: float = Field(0.0, ge=0, description="Adam's weight decay")


class Config(BaseModel):
    """A whole run: what to prune, how to search, and how to score."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    task: TaskConfig = Field(description="what to prune (docs/tasks.md)")
    space: SpaceConfig = Field(SpaceConfig(), description="the search space")
    budget: dict[str, float] = Field(
        description="exactly one of sparsity (fraction of prunable weights removed, at least), "
        "flops or params (fraction of the dense model's FLOPs or params kept, at most), or "
        "latency_ms (the deployed model's measured latency, batch 1, one thread: compacted at "
        "channel granularity, on sparse kernels at weight granularity; docs/export.md)"
    )
    fitness: FitnessConfig = Field(FitnessConfig(), description="how candidates are scored")
    searcher: SearcherConfig | None = Field(
        None, description="the searcher; give exactly one of searcher and method"
    )
    method: MethodConfig | None = Field(
        None, description="a baseline or training-time method instead of a searcher"
    )
    evaluator: EvaluatorConfig = Field(EvaluatorConfig(), description="where candidates are scored")
    run: RunConfig = Field(RunConfig(), description="stopping rules and seed")
    selection: SelectionConfig = Field(
        SelectionConfig(), description="re-scoring the top candidates before picking the best"
    )
    finetune: FinetuneConfig = Field(
        FinetuneConfig(), description="fine-tuning of the best mask and the baselines' masks"
    )
    tracking: list[str | dict[str, Any]] = Field(
        default_factory=list,
        description="loggers that follow the run: tensorboard (logs in <run dir>/tensorboard, "
        "option log_dir) and mlflow (options experiment, tracking_uri, run_name), as names "
        "or {name: ..., option: ...}; the `tracking` extra installs them",
    )
    baselines: list[str] = Field(
        default_factory=lambda: ["magnitude-global", "magnitude-layer"],
        description="baselines scored at the same budget and reported beside the best "
        "candidate (one-shot methods, docs/methods.md#baselines)",
    )

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: dict[str, float]) -> dict[str, float]:
        Budget.from_mapping(value)
        return value

    @model_validator(mode="after")
    def _searcher_or_method(self) -> Config:
        if (self.searcher is None) == (self.method is None):
            raise ValueError(
                "give exactly one of 'searcher' (e.g. searcher: {name: ga}) or "
                "'method' (e.g. method: magnitude-global)"
            )
        return self

    @property
    def method_name(self) -> str:
        """The searcher's or method's name."""
        chosen = self.method or self.searcher
        assert chosen is not None
        return chosen.name

    @property
    def budget_spec(self) -> Budget:
        return Budget.from_mapping(self.budget)

    def resolved(self) -> dict[str, Any]:
        """The config with every default filled in, as plain data for YAML."""
        data = self.model_dump(mode="json", exclude_none=False)
        data["task"] = {"name": self.task.name, "seed": self.task.seed, **self.task.options}
        if self.searcher is not None:
            data["searcher"] = {"name": self.searcher.name, **(self.searcher.model_extra or {})}
        if self.method is not None:
            data["method"] = {"name": self.method.name, **self.method.options}
        return {key: value for key, value in data.items() if value is not None}


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith("function-"))


def _describe(error: Any, model: type[BaseModel]) -> str:
    where = _location(error["loc"]) or "config"
    if error["type"] == "extra_forbidden":
        section: type[BaseModel] | None = model
        for part in error["loc"][:-1]:
            field = section.model_fields.get(str(part)) if section is not None else None
            annotation = getattr(field, "annotation", None)
            section = next(
                (
                    arg
                    for arg in getattr(annotation, "__args__", (annotation,))
                    if isinstance(arg, type) and issubclass(arg, BaseModel)
                ),
                None,
            )
        valid = sorted(section.model_fields) if section is not None else []
        hint = unknown_name_message(where, "key", str(error["loc"][-1]), valid) if valid else ""
        return hint or f"{where}: unknown key"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{where}: required key is missing"
    if error["type"] == "finite_number":
        return f"{where}: must be a finite number (got {error.get('input')!r})"
    if message.startswith(f"{where}."):  # the message names a key inside the section
        return message
    return f"{where}: {message} (got {error.get('input')!r})"


def describe_errors(
    error: ValidationError, section: str, params: type[BaseModel], name: str
) -> str:
    """The errors of a searcher's or method's own settings, each naming ``section.key``."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            valid = ", ".join(["name", *sorted(params.model_fields)])
            lines.append(
                f"{section}.{key}: unknown key for {section} {name!r}; valid keys: {valid}"
            )
        else:
            lines.append(f"{section}.{key}: {item['msg']} (got {item.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def validate_config(data: Any) -> Config:
    """Validate plain config data.

    :raises ConfigError: listing every problem, each naming its key.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    _refuse_binary(data, "")
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        lines = [_describe(item, Config) for item in error.errors()]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None
    except UnknownNameError as error:
        raise ConfigError(str(error)) from None


def _refuse_binary(data: Any, where: str) -> None:
    """Refuse YAML ``!!binary`` values: a config holds text, numbers and their lists."""
    if isinstance(data, dict):
        for key, value in data.items():
            _refuse_binary(value, f"{where}.{key}" if where else str(key))
    elif isinstance(data, (list, tuple)):
        for index, value in enumerate(data):
            _refuse_binary(value, f"{where}[{index}]")
    elif isinstance(data, (bytes, bytearray)):
        raise ConfigError(
            f"{where}: a binary value (!!binary) is not a config value; give a string or a number"
        )


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``--set dotted.key=value`` (the value is parsed as YAML) to ``data``;
    ``--set budget.<kind>=value`` replaces the budget (a run has one budget)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(
            f"--set {assignment!r}: use --set dotted.key=value, e.g. --set run.seed=3"
        )
    parts = key.split(".")
    try:
        value = load_yaml(raw)
    except yaml.YAMLError as error:
        raise ConfigError(
            f"--set {assignment!r}: the value of {key} is not valid YAML "
            f"({_yaml_problem(error)}); quote a string value, e.g. --set '{key}=\"text\"'"
        ) from None
    if parts[0] == "budget" and len(parts) == 2:  # a budget is one kind: the new one replaces it
        data["budget"] = {parts[1]: value}
        return
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if isinstance(child, str):
            child = {"name": child}
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part} is not a section")
        node[part] = child
        node = child
    node[parts[-1]] = value


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where."""
    if isinstance(error, DuplicateKeyError):
        return str(error)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def read_config_data(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML config as plain data and apply ``--set`` overrides (not validated)."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"config {path} is not UTF-8 text ({error.reason})") from None
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config {path} is not valid YAML: {_yaml_problem(error)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections")
    for assignment in overrides or []:
        apply_override(data, assignment)
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``--set`` overrides, and validate it."""
    return validate_config(read_config_data(path, overrides))


__all__ = [
    "BUDGET_KINDS",
    "Config",
    "ConfigError",
    "apply_override",
    "load_config",
    "load_yaml",
    "validate_config",
]
