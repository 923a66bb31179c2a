"""The attack interface every plugin implements, built-in or user-written.

An attack is a small class with a name, a threat model and parameters with defaults, called on a
batch as ``attack(model, x, y, eps) -> x_adv``. Images are float tensors in [0,1] (N,C,H,W); the
model maps them to logits and is already in eval mode. ``eps`` is on the [0,1] scale in the
attack's norm. Attacks that can share work across budgets set ``multi_eps = True`` and override
:meth:`Attack.perturb_many`, which returns one adversarial batch per eps.

Minimal-perturbation attacks (C&W, DeepFool, Boundary) set ``bounded = False``: they ignore eps,
and the engine records the norm of what they found instead of checking it against a budget.
"""

from __future__ import annotations

import abc
import contextlib
import inspect
from collections.abc import Iterator, Sequence
from enum import Enum
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import UserError


class ThreatModel(str, Enum):
    """Which norm bounds the perturbation."""

    LINF = "linf"
    L2 = "l2"
    L0 = "l0"
    NONE = "none"


class AttackKind(str, Enum):
    """What the attack may see of the model; the sanity checks compare kinds."""

    WHITE_BOX = "white-box"          # gradients
    SCORE = "black-box-score"        # logits/probabilities only
    DECISION = "black-box-decision"  # predicted label only
    RANDOM = "random"                # ignores the model (noise baselines)


class Attack(abc.ABC):
    """Base class for attacks. Subclass, set the class attributes, implement :meth:`perturb`.

    Class attributes:
        name: registry name (lowercase, dashes), e.g. ``"pgd-linf"``.
        threat_model: the norm the budget is measured in.
        kind: white-box, black-box (score/decision) or random.
        bounded: False for minimal-perturbation attacks that ignore eps.
        iterative: True for multi-step attacks (sanity: never weaker than FGSM per sample).
        randomized: True when results depend on the seed.
        multi_eps: True when :meth:`perturb_many` shares work across eps (one call, all eps).
        defaults: parameter names and default values; constructor keywords override them.
    """

    name: ClassVar[str] = ""
    threat_model: ClassVar[ThreatModel] = ThreatModel.LINF
    kind: ClassVar[AttackKind] = AttackKind.WHITE_BOX
    bounded: ClassVar[bool] = True
    iterative: ClassVar[bool] = False
    randomized: ClassVar[bool] = False
    multi_eps: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}

    #: where the registry found this attack ("builtin", "entry-point:...", "folder:PATH", "adapter")
    source: str = "python"

    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise UserError(
                f"attack '{self.name}': unknown parameter(s) {', '.join(unknown)} (known: {known})"
            )
        self.seed = int(seed)
        self.params: dict[str, Any] = {**self.defaults, **params}

    # -- the one method a plugin must write ---------------------------------------------------
    @abc.abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """Return adversarial images for ``x`` (labels ``y``) within ``eps`` in ``threat_model``."""

    def perturb_many(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float]
    ) -> list[torch.Tensor]:
        """One adversarial batch per eps. Override when work can be shared across eps."""
        return [self.perturb(model, x, y, float(eps)) for eps in eps_list]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        return self.perturb(model, x, y, eps)

    # -- helpers for plugin authors ----------------------------------------------------------
    def generator(self, device: torch.device | str) -> torch.Generator:
        """A generator seeded with this attack's seed, for reproducible random starts/noise."""
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed)
        return gen

    @contextlib.contextmanager
    def global_rng(self, device: torch.device | str = "cpu") -> Iterator[None]:
        """Fork torch's global RNG, seed it with this attack's seed, restore it on exit.

        For third-party code (torchattacks, foolbox) that draws from the global generator: the
        attack becomes reproducible and the caller's RNG stream is left exactly as it was.
        """
        dev = torch.device(device)
        devices = []
        if dev.type == "cuda":
            devices = [dev.index if dev.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            yield

    @staticmethod
    @contextlib.contextmanager
    def frozen(model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily turn off ``requires_grad`` on the model's parameters (restored on exit).

        Attacks only need gradients w.r.t. the input; libraries that call ``loss.backward()``
        would otherwise accumulate (and leave behind) ``.grad`` on every weight.
        """
        params = list(model.parameters())
        saved = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(False)
            yield model
        finally:
            for p, flag in zip(params, saved, strict=True):
                p.requires_grad_(flag)

    @classmethod
    def summary(cls) -> str:
        doc = inspect.getdoc(cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}(name={self.name!r}, {params})"
