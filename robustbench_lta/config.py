"""Validated configuration for every YAML file the tool reads, and ``--set key=value`` overrides.

Configs are validated once, here; every later stage trusts them. Validation problems become one
:class:`~robustbench_lta.errors.UserError` line naming the key, what was wrong and how to fix it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError

C = TypeVar("C", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# ----------------------------------------------------------------------------------------- train
class ModelSpec(_Strict):
    name: str = Field(description="registry name, e.g. vgg16_att3_concat_pc")
    width: float = Field(1.0, gt=0, le=4, description="channel-width multiplier")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments")


class DataSpec(_Strict):
    name: str = Field("cluttered-digits", description="dataset registry name, imagefolder:PATH, npz:PATH")
    root: str | None = Field(None, description="where torchvision datasets live (default ./data)")
    download: bool = Field(False, description="allow torchvision to download missing files")
    n_train: int | None = Field(None, gt=0, description="use only the first N training images")
    n_test: int | None = Field(None, gt=0, description="use only the first N test images")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra dataset arguments")


class AugmentSpec(_Strict):
    flip: bool = True
    crop_padding: int = Field(4, ge=0, le=16)


class TrainConfig(_Strict):
    """One training run. Defaults follow the paper's CIFAR recipe where it has one."""

    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    epochs: int = Field(300, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    lr_step_epochs: int = Field(25, gt=0, description="multiply lr by lr_gamma every this many epochs")
    lr_gamma: float = Field(0.5, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    seed: int = 0
    seeds: list[int] | None = Field(
        None, min_length=1, description="train one run per seed into <out>/seed<S> (a model family); "
        "overrides `seed`; see training/family.py"
    )
    family: str | None = Field(None, description="family name written into each seed run's card "
                               "(set by training/family.py; default: the out folder's name)")
    device: str = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: bool = True
    num_workers: int = Field(0, ge=0)
    eval_every: int = Field(1, gt=0)
    out: str | None = Field(None, description="output folder (default runs/<model name>)")


# ----------------------------------------------------------------------------------------- sweep
class SweepModelSpec(_Strict):
    """A model to attack: a checkpoint path, or a registry name (untrained unless a checkpoint)."""

    name: str | None = Field(None, description="label in the results (default: derived from source)")
    source: str = Field(description="checkpoint path (.safetensors/.json/run folder) or registry name")
    width: float = Field(1.0, gt=0)
    num_classes: int | None = Field(None, gt=0)


class SweepAttackSpec(_Strict):
    name: str = Field(description="attack name from `robustbench-lta attacks`, or ta:Class / fb:Class")
    label: str | None = Field(None, description="name in the results (default: the attack name)")
    params: dict[str, Any] = Field(default_factory=dict)
    eps: list[float] | None = Field(
        None, description="this attack's own eps list (same scale as the sweep's eps)"
    )


class SweepConfig(_Strict):
    models: list[SweepModelSpec] = Field(min_length=1)
    attacks: list[SweepAttackSpec] = Field(min_length=1)
    eps: list[float] = Field(default_factory=lambda: [0, 1, 2, 4, 8])
    eps_scale: float = Field(255.0, gt=0, description="eps values are divided by this (255: pixel units)")
    data: DataSpec | None = Field(None, description="default: the dataset named in the first model's card")
    n: int = Field(1000, gt=0, description="number of test samples")
    batch_size: int = Field(256, gt=0)
    device: str = "auto"
    seed: int = 0
    accounting: Literal["worst-case", "per-attack"] = Field(
        "worst-case",
        description="worst-case: a sample broken at a smaller eps counts as broken at larger eps and is "
        "not attacked again; per-attack: every clean-correct sample is attacked at every eps",
    )
    plugins: list[str] = Field(default_factory=list, description="extra plugin folders")
    executor: Literal["local", "ray"] = "local"
    attention_samples: int = Field(8, ge=0, description="images whose attention maps are stored")
    sanity_samples: int = Field(
        64, ge=0, description="samples for the model checks and the large-eps probe (0: skip the probe)"
    )
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "off", description="autocast for attack forwards on CUDA (verification always in float32)"
    )
    channels_last: bool = Field(
        True,
        description="NHWC weights: faster convolutions on CPU (oneDNN; +25-45% measured) and on CUDA; "
        "logits agree with NCHW to float rounding",
    )
    compile: bool = Field(False, description="torch.compile the model forward on CUDA")
    out: str | None = None

    @field_validator("eps")
    @classmethod
    def _eps_ok(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one eps")
        if any((not math.isfinite(e)) or e < 0 for e in v):
            raise ValueError("eps values must be finite and >= 0")
        return sorted(set(v))

    @model_validator(mode="after")
    def _unique_labels(self) -> SweepConfig:
        labels = [a.label or a.name for a in self.attacks]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"attack labels must be unique, repeated: {sorted(dup)} (set `label:`)")
        return self

    def eps_unit(self) -> list[float]:
        """The sweep's eps on the [0,1] image scale."""
        return [e / self.eps_scale for e in self.eps]


# ------------------------------------------------------------------------------------- loading
def _format_validation_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key '{loc}': check the spelling (see configs/ for valid examples)"
    if err["type"] == "missing":
        return f"{source}: missing required key '{loc}'"
    value = err.get("input")
    shown = f" (got {value!r})" if value is not None and not isinstance(value, dict) else ""
    more = f" (+{len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
    return f"{source}: bad value for '{loc}': {err['msg']}{shown}{more}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value) with the value parsed as YAML (numbers, lists, bools)."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected key=value, e.g. --set epochs=5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"--set {text!r}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise UserError(f"--set {item!r}: '{part}' is not a section, cannot set a key inside it")
            node = nxt
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}:{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys at the top level")
    return data


def validate(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_validation_error(exc, source)) from None


def load_config(
    cls: type[C], path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> C:
    """Read YAML (or start empty), apply ``--set`` overrides, validate into ``cls``."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    return validate(cls, data, str(path) if path is not None else "options")
