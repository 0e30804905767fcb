"""The YAML config: validated with pydantic, with errors that name the key and the fix.

Every section but ``task``, ``budget`` and ``searcher`` (or ``method``) has defaults; a
bare string is shorthand for ``{name: ...}``. See the README for every key.
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


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class TaskConfig(_Section):
    """A built-in task name or ``"package.module:factory"``; other keys go to the factory."""

    model_config = ConfigDict(extra="allow")
    name: str
    seed: int = Field(0, description="seed the built-in model is trained with")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SpaceConfig(_Section):
    name: str = "layer-ratios"
    granularity: str = "weight"
    criterion: str = "magnitude"
    min_ratio: float = Field(0.0, ge=0.0, le=1.0)
    max_ratio: float | None = Field(None, ge=0.0, le=1.0)
    layer_bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)
    exclude_output: bool = True
    exclude: list[str] = Field(default_factory=list)

    @field_validator("granularity")
    @classmethod
    def _granularity(cls, value: str) -> str:
        return parse_granularity(value)


class FitnessConfig(_Section):
    """A built-in fitness name or ``"package.module:function"``; other keys are passed to
    the function as keyword options (``latency_aware``: ``target_ms``, ``weight``)."""

    model_config = ConfigDict(extra="allow")
    name: str = "accuracy"
    predict_latency: bool = Field(
        False,
        description="measure a latency curve and give every candidate a predicted "
        "ctx.stats['latency_ms'] (implied by latency_aware and latency_ms budgets)",
    )
    penalty: float | None = Field(
        None, description="score given to a candidate whose fitness fails"
    )
    bn_samples: int | None = Field(
        None,
        ge=0,
        description="train samples for BatchNorm recalibration (default 512 with BN, else 0)",
    )

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SearcherConfig(_Section):
    model_config = ConfigDict(extra="allow")
    name: str


class MethodConfig(_Section):
    """A baseline or training-time method run instead of a searcher; other keys are the
    method's settings (training-time methods: ``epochs``, ``lr``, ...)."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EvaluatorConfig(_Section):
    name: Literal["local", "ray"] = "local"
    device: str = "cpu"
    threads: int = Field(1, ge=1, description="torch threads; 1 is fastest for small models here")
    cache: bool = True
    channels_last: bool = Field(True, description="NHWC memory format for models with Conv2d")
    actors: int = Field(2, ge=1, description="ray: actors holding the problem")
    num_cpus: float = Field(1.0, gt=0, description="ray: CPUs per actor")
    num_gpus: float = Field(0.0, ge=0, description="ray: GPUs per actor (fractions share a GPU)")
    address: str | None = Field(
        None, description="ray: cluster address (default RAY_ADDRESS or a local Ray)"
    )
    chunk: int | None = Field(None, ge=1, description="ray: genomes per call (default adaptive)")
    max_deaths: int = Field(
        3, ge=1, description="ray: actor deaths on one chunk before the run stops, naming it"
    )


class RunConfig(_Section):
    max_evals: int = Field(1000, ge=1)
    max_seconds: float | None = Field(None, gt=0)
    target_fitness: float | None = None
    seed: int = 0
    progress: bool = True


class FinetuneConfig(_Section):
    """Fine-tuning of the best mask and of each baseline's, with the mask held fixed."""

    epochs: int = Field(0, ge=0, description="passes over the train split; 0 = no fine-tuning")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(0.0, ge=0)


class Config(BaseModel):
    """A whole run: what to prune, how to search, and how to score."""

    model_config = ConfigDict(extra="forbid")
    task: TaskConfig
    space: SpaceConfig = SpaceConfig()
    budget: dict[str, float]
    fitness: FitnessConfig = FitnessConfig()
    searcher: SearcherConfig | None = None
    method: MethodConfig | None = None
    evaluator: EvaluatorConfig = EvaluatorConfig()
    run: RunConfig = RunConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    baselines: list[str] = Field(default_factory=lambda: ["magnitude-global", "magnitude-layer"])

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
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        lines = [_describe(item, Config) for item in error.errors()]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None
    except UnknownNameError as error:
        raise ConfigError(str(error)) from None


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``--set dotted.key=value`` (the value is parsed as YAML) to ``data``."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(
            f"--set {assignment!r}: use --set dotted.key=value, e.g. --set run.seed=3"
        )
    parts = key.split(".")
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
    node[parts[-1]] = yaml.safe_load(raw)


def read_config_data(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML config as plain data and apply ``--set`` overrides (not validated)."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config {path} is not valid YAML: {error}") from None
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
    "validate_config",
]
