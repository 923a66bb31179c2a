"""Validated configuration for every YAML file the tool reads, and ``--set key=value`` overrides.

Configs are validated once, here; every later stage trusts them. Validation problems become one
:class:`~robustbench_lta.errors.UserError` line naming the key, what was wrong and how to fix it.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError

C = TypeVar("C", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _cpu_jiffies() -> tuple[int, int]:
    """(total, idle) jiffies of all CPUs from /proc/stat (Linux)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:9]]
    return sum(values), values[3] + values[4]


def busy_cores(window: float = 0.1) -> float | None:
    """Cores other processes keep busy right now: the machine's busy share over ``window`` seconds,
    less this process's own use; None where /proc/stat is absent (not Linux).

    Measured now, not averaged over the past minute: the 1-minute load average still counts a job
    that just finished, such as the ``pip install`` that ``make demo`` runs first (which left the
    demo on 1 of 2 idle cores).
    """
    try:
        total0, idle0 = _cpu_jiffies()
        own0 = sum(os.times()[:2])
        time.sleep(window)
        total1, idle1 = _cpu_jiffies()
        own1 = sum(os.times()[:2])
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    cpus = os.cpu_count() or 1
    busy = (1.0 - (idle1 - idle0) / (total1 - total0)) * cpus - (own1 - own0) / window
    return max(0.0, busy)


_DEFAULT_THREADS: int | None = None


def default_threads() -> int:
    """The CPU cores this process may use, less those other jobs keep busy; at least 1.

    Cores: the affinity mask where the OS has one. Busy: :func:`busy_cores` rounded (elsewhere the
    1-minute load average, rounded down). A job started beside a 2-thread training run on 2 cores
    gets 1 thread, not 2 that would spin against the other job's (15-37 img/s against 200+ with one
    thread, seen on such a machine). Measured once per process.
    """
    global _DEFAULT_THREADS
    if _DEFAULT_THREADS is not None:
        return _DEFAULT_THREADS
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        cores = max(1, os.cpu_count() or 1)
    measured = busy_cores()
    if measured is not None:
        busy = int(round(measured))
    else:
        try:
            busy = int(os.getloadavg()[0])
        except (AttributeError, OSError):  # Windows
            busy = 0
    _DEFAULT_THREADS = max(1, cores - min(busy, cores - 1))
    return _DEFAULT_THREADS


def apply_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None: :func:`default_threads`); returns the number now in use.

    Two torch jobs that each use every core of the same machine slow each other down far more than
    twice (threads spin while waiting for each other): give each job its share with ``threads``.
    """
    import torch

    n = int(threads) if threads else default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


_THREADS_HELP = (
    "CPU threads torch uses (default: the cores this process may use less those other jobs keep busy, "
    "measured at start; the number used is recorded); give each of two jobs sharing a "
    "machine its own share, e.g. 1 each on 2 cores"
)
_PLUGINS_HELP = (
    "plugin files or folders to load first (every .py file of a folder whose name does not start "
    "with _): they may register models, datasets and attacks"
)


# ----------------------------------------------------------------------------------------- train
class ModelSpec(_Strict):
    name: str = Field(description="registry name, e.g. vgg16_att3_concat_pc")
    width: float = Field(1.0, gt=0, le=4, description="channel-width multiplier")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments")


class DataSpec(_Strict):
    name: str = Field("cluttered-digits", description="dataset registry name, imagefolder:PATH, npz:PATH")
    root: str | None = Field(
        None, description="where torchvision datasets live (default $ROBUSTBENCH_LTA_DATA, else ./data)"
    )
    download: bool = Field(False, description="allow torchvision to download missing files")
    n_train: int | None = Field(None, gt=0, description="use only the first N training images")
    n_test: int | None = Field(None, gt=0, description="use only the first N test images")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra dataset arguments")


class AugmentSpec(_Strict):
    flip: bool = Field(True, description="random horizontal flips of training images")
    crop_padding: int = Field(
        4, ge=0, le=16, description="random crops after padding by this many pixels (0: no crops)"
    )


#: How the card, the log and the report name each adversarial training method.
TRAINING_METHOD_NAMES = {"pgd": "PGD-AT", "trades": "TRADES", "fgsm-rs": "FGSM-RS (fast AT)",
                         "n-fgsm": "N-FGSM (fast AT)"}


class AdversarialSpec(_Strict):
    """The training threat model (docs/training.md, "Adversarial training"); ``method: none`` trains on
    clean images. Budgets are in ``eps_scale`` units like a sweep's eps (8 = 8/255)."""

    method: Literal["none", "pgd", "trades", "fgsm-rs", "n-fgsm"] = Field(
        "none", description="none; pgd (Madry et al. 2018, PGD-AT); trades (Zhang et al. 2019); fgsm-rs "
        "(Wong et al. 2020: FGSM from a random start, step 1.25 eps); n-fgsm (de Jorge et al. 2022: FGSM "
        "step eps from noise of noise_factor x eps, unprojected; avoids catastrophic overfitting)"
    )
    norm: Literal["linf", "l2"] = Field("linf", description="the perturbation's norm")
    eps: float = Field(8.0, ge=0, allow_inf_nan=False, description="budget, in eps_scale units (8 = 8/255)")
    eps_scale: float = Field(
        255.0, gt=0, allow_inf_nan=False, description="eps and step_size are divided by this"
    )
    step_size: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="step, in eps_scale units; default eps/4 for pgd and trades, 1.25 eps for fgsm-rs, "
        "eps for n-fgsm"
    )
    steps: int = Field(
        10, ge=1, description="attack steps per training batch (pgd, trades; fgsm-rs and n-fgsm: 1)"
    )
    noise_factor: float = Field(
        2.0, gt=0, allow_inf_nan=False,
        description="n-fgsm: half-width of the uniform starting noise, in units of eps"
    )
    beta: float = Field(6.0, ge=0, allow_inf_nan=False, description="TRADES: weight of the robustness term")
    loss: Literal["ce", "margin"] = Field(
        "ce", description="the loss the training examples ascend (pgd, fgsm-rs, n-fgsm): ce, the "
        "reference implementations' cross-entropy, or margin, Carlini-Wagner's max_{j != y} z_j - z_y; "
        "the model is still trained on cross-entropy. trades ascends its own KL term"
    )
    eval_every: int = Field(
        1, ge=1, description="robust validation accuracy every this many epochs (and the last)"
    )
    eval_steps: int = Field(10, ge=1, description="PGD steps of the robust validation attack")
    eval_n: int = Field(1000, ge=1, description="validation images the robust accuracy is measured on")
    collapse_ratio: float = Field(
        0.5, gt=0, lt=1, description="catastrophic overfitting: validation PGD accuracy below this share of "
        "its best so far while validation FGSM accuracy rises or falls by under half as much"
    )

    @model_validator(mode="after")
    def _loss_applies(self) -> AdversarialSpec:
        if self.loss != "ce" and self.method in ("none", "trades"):
            what = "ascends its own KL term" if self.method == "trades" else "attacks nothing"
            raise ValueError(f"adversarial.loss {self.loss!r} applies to pgd, fgsm-rs and n-fgsm; method "
                             f"{self.method!r} {what}: remove adversarial.loss")
        return self

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def eps01(self) -> float:
        """The budget on the [0,1] scale."""
        return self.eps / self.eps_scale

    @property
    def step01(self) -> float:
        """The training attack's step on the [0,1] scale."""
        if self.step_size is not None:
            return self.step_size / self.eps_scale
        return self.eps01 * {"fgsm-rs": 1.25, "n-fgsm": 1.0}.get(self.method, 0.25)

    @property
    def train_steps(self) -> int:
        return 1 if self.method in ("fgsm-rs", "n-fgsm") else self.steps

    def label(self) -> str:
        """``PGD-AT, Linf 8/255`` as the report and the card's summary say it."""
        name = {**TRAINING_METHOD_NAMES, "trades": f"TRADES (beta {self.beta:g})"}
        if not self.enabled:
            return "standard (no adversarial training)"
        norm = "Linf" if self.norm == "linf" else "L2"
        scale = "" if self.eps_scale == 1 else f"/{self.eps_scale:g}"
        loss = " (margin loss)" if self.loss == "margin" else ""
        return f"{name[self.method]}{loss}, {norm} {self.eps:g}{scale}"


class TrainConfig(_Strict):
    """One training run. Defaults follow the paper's CIFAR recipe where it has one."""

    model: ModelSpec = Field(description="the architecture to train")
    data: DataSpec = Field(default_factory=DataSpec, description="the dataset (train and test splits)")
    augment: AugmentSpec = Field(default_factory=AugmentSpec, description="training-time augmentation")
    epochs: int = Field(300, gt=0, description="training epochs (may be raised to resume a finished run)")
    batch_size: int = Field(128, gt=0, description="images per SGD step")
    lr: float = Field(0.1, gt=0, description="initial SGD learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (Nesterov off)")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay")
    lr_step_epochs: int = Field(25, gt=0, description="multiply lr by lr_gamma every this many epochs")
    lr_schedule: Literal["step", "onecycle"] = Field(
        "step", description="step: the paper's decay by lr_gamma every lr_step_epochs (after warmup); "
        "onecycle: linear from 0 up to lr at 2/5 of the epochs, then down to 0 (Wong et al. 2020's "
        "cyclic schedule; short CPU recipes)"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    adversarial: AdversarialSpec = Field(
        default_factory=AdversarialSpec, description="the training threat model (adversarial training)"
    )
    lr_gamma: float = Field(0.5, gt=0, le=1, description="the step decay factor of the learning rate")
    warmup_epochs: int = Field(0, ge=0, description="linear learning-rate warm-up over this many epochs")
    seed: int = Field(0, description="seeds initialisation, batch order and augmentation")
    seeds: list[int] | None = Field(
        None, min_length=1, description="train one run per seed into <out>/seed<S> (a model family); "
        "overrides `seed`; see training/family.py"
    )
    family: str | None = Field(None, description="family name written into each seed run's card "
                               "(set by training/family.py; default: the out folder's name)")
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="mixed precision. auto: bf16 where the hardware has it natively (CUDA Ampere+, "
        "a CPU with AMX or AVX512-BF16), else fp16 on CUDA and float32 on CPU; bf16: also on any CPU; "
        "fp16: CUDA only (with a grad scaler); off: float32. The card records which ran"
    )
    channels_last: bool = Field(
        True, description="NHWC memory layout (CUDA and CPU: oneDNN's NHWC convolutions train faster)"
    )
    num_workers: int = Field(0, ge=0, description="unused: batches are gathered on the device")
    eval_every: int = Field(1, gt=0, description="clean validation accuracy every this many epochs (and the "
                            "last); without a threat model, selection sees only these epochs")
    threads: int | None = Field(None, ge=1, description=_THREADS_HELP)
    plugins: list[str] = Field(default_factory=list, description=_PLUGINS_HELP)
    val_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="share of the training images held out (seeded, stratified) to choose `best` on; "
        "0: no hold-out, `best` is the last epoch. The test split is measured once, for the chosen epoch",
    )

    @field_validator("device")
    @classmethod
    def _device_ok(cls, v: str) -> str:
        return check_device_name(v)
    out: str | None = Field(None, description="output folder (default runs/<model name>)")


# ----------------------------------------------------------------------------------------- sweep
class SweepModelSpec(_Strict):
    """A model to attack: any model source (docs/models.md)."""

    name: str | None = Field(None, description="label in the results (default: derived from source)")
    source: str = Field(description="checkpoint path (.safetensors/.json/run folder), registry name, "
                        "robustbench:<dataset>/<threat>/<name>, timm:<name>, torchvision:<name>, "
                        "hf-hub:<org>/<repo>, or a bare .safetensors state dict with arch")
    arch: str | None = Field(None, description="architecture of a bare state dict: a registry name, "
                             "timm:<name> or torchvision:<name>")
    width: float = Field(1.0, gt=0, description="channel-width multiplier (registry names only)")
    num_classes: int | None = Field(
        None, gt=0, description="logits of an untrained registry model (default 10; checkpoints: the card)"
    )
    download: bool = Field(False, description="fetch missing pretrained weights (never done otherwise)")
    resize_inputs: bool = Field(False, description="resize images to the card's input size inside the model")


def _no_bool_eps(v: Any) -> Any:
    """Run before pydantic's float parsing, which reads YAML's true/false as 1.0/0.0 (``eps: [true,
    false]`` became 1/255 and 0 without a word)."""
    if isinstance(v, list) and any(isinstance(e, bool) for e in v):
        bad = next(e for e in v if isinstance(e, bool))
        raise ValueError(f"eps values must be numbers, not {str(bad).lower()} (a YAML boolean; "
                         "yes/no/on/off are booleans too)")
    return v


def _check_eps_list(v: list[float], what: str) -> list[float]:
    """Shared by the sweep's and each attack's eps: non-empty, finite, >= 0; sorted, deduplicated."""
    if not v:
        raise ValueError(f"give at least one eps{what}")
    if any((not math.isfinite(e)) or e < 0 for e in v):
        raise ValueError("eps values must be finite and >= 0")
    return sorted(set(v))


def check_device_name(device: str) -> str:
    """Syntax only (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``): portable across machines."""
    text = str(device).strip().lower()
    if text in ("auto", "cpu", "cuda", "mps") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")


def check_device_available(device: str) -> None:
    """Raise :class:`UserError` when ``device`` names hardware this machine lacks.

    Called by the CLI before anything is created (no results folder is left behind); kept out of
    the pydantic models so a config or manifest written on a GPU machine still loads elsewhere.
    """
    text = check_device_name(device) if device else "auto"
    if text in ("auto", "cpu"):
        return
    import torch

    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} asked for but CUDA is not available here: use --device cpu "
                            "(or auto)")
        index = int(text[5:]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here "
                            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif text == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"device {device!r} asked for but MPS is not available here: use --device cpu")


class SweepAttackSpec(_Strict):
    name: str = Field(description="attack name from `robustbench-lta attacks`, or ta:Class / fb:Class")
    label: str | None = Field(None, description="name in the results (default: the attack name)")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the attack's parameters, e.g. {steps: 20}; see `robustbench-lta attacks` for defaults",
    )
    eps: list[float] | None = Field(
        None, description="this attack's own eps list (same scale as the sweep's eps)"
    )

    _eps_not_bool = field_validator("eps", mode="before")(_no_bool_eps)

    @field_validator("eps")
    @classmethod
    def _eps_ok(cls, v: list[float] | None) -> list[float] | None:
        # an empty list would silently drop the attack from every table: refuse it like the global one
        return None if v is None else _check_eps_list(v, " (or drop `eps:` to use the sweep's list)")


class SweepConfig(_Strict):
    models: list[SweepModelSpec] = Field(min_length=1, description="the models to attack (at least one)")
    attacks: list[SweepAttackSpec] = Field(min_length=1, description="the attacks to run (at least one)")
    eps: list[float] = Field(
        default_factory=lambda: [0, 1, 2, 4, 8], description="perturbation budgets, divided by eps_scale"
    )
    eps_scale: float = Field(
        255.0, gt=0, allow_inf_nan=False, description="eps values are divided by this (255: pixel units)"
    )
    data: DataSpec | None = Field(None, description="default: the dataset named in the first model's card")
    n: int = Field(1000, gt=0, description="number of test samples")
    batch_size: int = Field(256, gt=0, description="images per attack batch")
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    seed: int = Field(0, description="seeds every randomised attack (and untrained registry models)")
    accounting: Literal["worst-case", "per-attack", "cascade"] = Field(
        "worst-case",
        description="worst-case: a sample broken at a smaller eps counts as broken at larger eps and is "
        "not attacked again; per-attack: every clean-correct sample is attacked at every eps; cascade: "
        "worst-case, and at each eps the attacks run cheapest first (single-step, iterative, black-box; "
        "config order within each), each only on the samples the earlier ones left: the worst case is the "
        "same, per-attack rows after the first count skipped samples as broken (column skipped)",
    )
    plugins: list[str] = Field(default_factory=list, description=_PLUGINS_HELP)
    threads: int | None = Field(None, ge=1, description=_THREADS_HELP)
    executor: Literal["local", "ray"] = Field(
        "local", description="local: in this process; ray: models spread over a Ray cluster"
    )
    attention_samples: int = Field(8, ge=0, description="images whose attention maps are stored")
    explorer_samples: int = Field(
        8, ge=0, le=1024, description="per cell (model x attack), the first K samples whose clean and "
        "adversarial images (and attention maps) are stored in explorer/ for the HTML report's per-sample "
        "explorer: about K x (1 + eps count) images per cell, whatever n is; 0: none")
    sanity_samples: int = Field(
        64, ge=0, description="samples for the model checks and the large-eps probe (the probe takes at most "
        "n/8 of them, at least 16; 0: skip the probe)"
    )
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "off", description="autocast for the forwards of bounded gradient attacks (auto: bf16 where the GPU "
        "or CPU has it natively, else fp16 on CUDA; fp16 loss-scaled); query-based and minimal-norm attacks, "
        "predictions and verification always run in float32"
    )
    channels_last: bool = Field(
        True,
        description="NHWC weights: faster convolutions on CPU (oneDNN; +25-45% measured) and on CUDA; "
        "logits agree with NCHW to float rounding",
    )
    compile: bool = Field(False, description="torch.compile the model forward on CUDA")
    shard_size: int | None = Field(
        1024, gt=0, description="samples per unit of work (a cell splits into shards; results do not "
        "depend on it for deterministic attacks)")
    retry_invalid: bool = Field(
        False, description="recompute stored invalid cells (failed ones are always retried)")
    replace: bool = Field(
        False, description="allow a sweep that drops models, attacks, eps or data to replace the tables of "
        "a finished results folder")
    ray_address: str | None = Field(None, description="Ray cluster address (default: RAY_ADDRESS or local)")
    ray_gpus_per_task: float | None = Field(
        None, ge=0, description="GPUs each Ray task asks for when it runs on CUDA (default: 1 when the "
        "cluster has GPUs, else 0; device cpu: always 0)")
    ray_cpus_per_task: float = Field(1, gt=0, description="CPUs each Ray task asks for")
    out: str | None = Field(
        None, description="results folder (CLI default results/<config name>; API: a temporary folder)"
    )

    _eps_not_bool = field_validator("eps", mode="before")(_no_bool_eps)

    @field_validator("eps")
    @classmethod
    def _eps_ok(cls, v: list[float]) -> list[float]:
        return _check_eps_list(v, "")

    @field_validator("device")
    @classmethod
    def _device_ok(cls, v: str) -> str:
        return check_device_name(v)

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


def parse_attack_string(text: str, flag: str = "attack") -> dict[str, Any]:
    """``pgd-linf`` or ``pgd-linf:steps=20,restarts=2`` (or ``ta:PGD:steps=10``) -> an attack spec dict,
    the values parsed as YAML; the CLI's ``--attack`` and ``run_sweep``'s strings share it."""
    name, _, rest = text.partition(":")
    if name in ("ta", "fb"):  # adapters keep their colon: ta:PGD or ta:PGD:steps=10
        cls, _, rest = rest.partition(":")
        if not cls:
            raise UserError(f"{flag} {text!r}: name the library class, e.g. {name}:PGD")
        name = f"{name}:{cls}"
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        if "=" not in item:
            raise UserError(f"{flag} {text!r}: parameters go as name:key=value,key=value")
        k, v = item.split("=", 1)
        k = k.strip()
        if not k:
            raise UserError(f"{flag} {text!r}: a parameter has no name (write key=value)")
        if k in params:  # keeping the last one silently would run a sweep nobody asked for
            raise UserError(f"{flag} {text!r}: parameter {k} is given twice; give it once")
        try:
            params[k] = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError:
            raise UserError(f"{flag} {text!r}: the value of {k} ({v!r}) is not a number, word, "
                            "true/false or [list]") from None
    return {"name": name, "params": params}


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
    msg = err["msg"].removeprefix("Value error, ")
    return f"{source}: bad value for '{loc}': {msg}{shown}{more}"


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


#: values a YAML document may stand for once its aliases are expanded (a real config has a few hundred;
#: a 1 KB "billion laughs" document stands for billions, and expanding it takes all memory)
MAX_YAML_VALUES = 100_000


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """How many values the node graph stands for with every alias written out (stops past ``limit``).

    Counted on the composed nodes, where an alias is one shared node, before anything is built;
    a node inside itself (``&a [*a]``) counts as past the limit: no config is infinite.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            return limit + 1
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children: list[yaml.Node] = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                break
        active.discard(key)
        sizes[key] = total
        return total

    return size(root)


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last silently), and a
    document whose aliases expand to more than :data:`MAX_YAML_VALUES` values (an alias bomb)."""

    def construct_document(self, node: yaml.Node) -> Any:
        if _expanded_size(node, MAX_YAML_VALUES) > MAX_YAML_VALUES:
            raise yaml.constructor.ConstructorError(
                None, None, f"its aliases (*name) expand to more than {MAX_YAML_VALUES} values: write "
                "the values out, or refer to fewer anchors", node.start_mark)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping: keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that raises ``yaml.YAMLError`` on duplicate mapping keys."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): "
            "save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc}): check its permissions") from None
    try:
        data = safe_load_unique(text)
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
