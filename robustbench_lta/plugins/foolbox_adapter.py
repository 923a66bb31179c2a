"""Run any foolbox 3 attack by name: ``fb:<ClassName>`` (e.g. ``fb:LinfPGD``, ``fb:L2DeepFoolAttack``).

The adapter class is built on demand from the foolbox class:

- the model is wrapped as ``foolbox.PyTorchModel(model, bounds=(0, 1))`` and the attack is called
  as ``attack(fmodel, x, y, epsilons=...)``;
- fixed-epsilon attacks (``FixedEpsilonAttack``: PGD, FGSM, BIM, noise, ...) are bounded and
  ``multi_eps``: one call gets the whole eps list and the clipped outputs are returned per eps;
- minimization attacks (``MinimizationAttack``: C&W, DeepFool, Boundary, FMN, ...) are unbounded:
  called with ``epsilons=None``, their raw (smallest found) adversarials are returned;
- threat model: from the attack's ``distance`` (linf / l2 / l0), or the ``threat_model``
  parameter, which also sets ``distance`` for attacks that take one (e.g. DatasetAttack); L1
  attacks are refused because results are reported in linf / l2 / l0 only;
- parameters: the constructor's keywords with foolbox's defaults (``init_attack``, ``distance``
  and ``tensorboard`` are not configurable); unknown keys are a UserError.

foolbox (through eagerpy) draws from torch's global RNG, so calls run inside
:meth:`Attack.global_rng`, with the model's parameters frozen (restored afterwards).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import UserError
from .base import Attack, AttackKind, ThreatModel, params_from_signature

_HIDDEN = {"init_attack", "distance", "tensorboard"}
_DECISION = {
    "BoundaryAttack",
    "HopSkipJumpAttack",
    "PointwiseAttack",
    "LinearSearchBlendedUniformNoiseAttack",
    "BinarySearchContrastReductionAttack",
    "LinearSearchContrastReductionAttack",
    "GaussianBlurAttack",
    "SaltAndPepperNoiseAttack",
    "BinarizationRefinementAttack",
    "DatasetAttack",
    "InversionAttack",
}
_P_TO_TM = {float("inf"): "linf", 2.0: "l2", 0.0: "l0"}
_ITER_KEYWORDS = ("steps", "repeats", "binary_search_steps", "directions")

_CACHE: dict[tuple[str, str], type[Attack]] = {}


def _library() -> Any:
    try:
        import foolbox
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise UserError("fb:... attacks need foolbox 3: pip install foolbox") from exc
    return foolbox


def _library_class(class_name: str) -> type:
    fb = _library()
    base = fb.attacks.base.Attack
    names = sorted(
        n
        for n in dir(fb.attacks)
        if isinstance(getattr(fb.attacks, n), type) and issubclass(getattr(fb.attacks, n), base)
    )
    cls = getattr(fb.attacks, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)) or inspect.isabstract(cls):
        close = difflib.get_close_matches(class_name, names, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join('fb:' + c for c in close)}?)" if close else ""
        raise UserError(f"foolbox has no attack class '{class_name}'{hint}; names are case-sensitive")
    if not issubclass(cls, (fb.attacks.base.FixedEpsilonAttack, fb.attacks.base.MinimizationAttack)):
        raise UserError(
            f"fb:{class_name} is neither a fixed-epsilon nor a minimization attack; not supported"
        )
    return cls


def _signature(cls: type) -> tuple[dict[str, Any], set[str], bool]:
    """(configurable keywords with defaults, required keywords, takes a ``distance`` keyword)."""
    defaults: dict[str, Any] = {}
    required: set[str] = set()
    params = inspect.signature(cls.__init__).parameters
    for pname, p in params.items():
        if pname == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or pname in _HIDDEN:
            continue
        if p.default is inspect.Parameter.empty:
            required.add(pname)
            defaults[pname] = None
        else:
            defaults[pname] = p.default
    return defaults, required, "distance" in params


def _distance_p(lib_cls: type) -> float | None:
    try:
        distance = lib_cls().distance
    except Exception:  # needs constructor arguments or an explicit distance
        return None
    p = getattr(distance, "p", None)
    return None if p is None else float(p)


def _kind(class_name: str) -> AttackKind:
    if "Repeated" in class_name or class_name in _DECISION:
        return AttackKind.DECISION
    if "AdditiveGaussianNoise" in class_name or "AdditiveUniformNoise" in class_name:
        return AttackKind.RANDOM
    if class_name == "L2ContrastReductionAttack":
        return AttackKind.RANDOM
    if class_name == "GenAttack":
        return AttackKind.SCORE
    return AttackKind.WHITE_BOX


class FoolboxAttack(Attack):
    """Base of the generated ``fb:<ClassName>`` adapters (not registered itself)."""

    library_class: ClassVar[type | None] = None
    required: ClassVar[frozenset[str]] = frozenset()
    takes_distance: ClassVar[bool] = False
    source = "adapter:foolbox"

    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        super().__init__(seed=seed, **params)
        missing = sorted(k for k in self.required if self.params.get(k) is None)
        if missing:
            raise UserError(
                f"{self.name}: parameter(s) {', '.join(missing)} must be set (no default in foolbox)"
            )

    def _build(self) -> Any:
        fb = _library()
        kwargs = {k: v for k, v in self.params.items() if k != "threat_model"}
        if self.takes_distance:
            kwargs["distance"] = {
                "linf": fb.distances.linf,
                "l2": fb.distances.l2,
                "l0": fb.distances.l0,
            }.get(self.threat_model.value, fb.distances.linf)
        try:
            return self.library_class(**kwargs)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{self.name}: bad parameters for foolbox: {exc}") from exc

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: list[float] | None) -> Any:
        fb = _library()
        with self.frozen(model), self.global_rng(x.device), torch.enable_grad():
            fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=x.device)
            attack = self._build()
            raw, clipped, _ = attack(fmodel, x.detach(), y.detach(), epsilons=epsilons)
        return raw, clipped

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        return self.perturb_many(model, x, y, [eps])[0]

    def perturb_many(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float]
    ) -> list[torch.Tensor]:
        if not self.bounded:
            raw, _ = self._run(model, x, y, None)
            out = raw.detach().to(device=x.device, dtype=x.dtype)
            return [out.clone() for _ in eps_list]
        _, clipped = self._run(model, x, y, [float(e) for e in eps_list])
        return [c.detach().to(device=x.device, dtype=x.dtype) for c in clipped]


def foolbox_attack_class(class_name: str, params: dict[str, Any] | None = None) -> type[Attack]:
    """The adapter class for ``fb:<class_name>`` (cached per class and threat model)."""
    params = params or {}
    fb = _library()
    lib_cls = _library_class(class_name)
    defaults, required, takes_distance = _signature(lib_cls)
    if params.get("threat_model") is not None:
        tm = str(params["threat_model"]).lower()
        if tm not in {t.value for t in ThreatModel}:
            raise UserError(
                f"fb:{class_name}: threat_model {params['threat_model']!r} is invalid; use linf, l2, l0"
            )
    else:
        p = _distance_p(lib_cls)
        if p is None:
            raise UserError(
                f"fb:{class_name}: cannot tell its norm; set the parameter threat_model (linf, l2 or l0)"
            )
        if p not in _P_TO_TM:
            raise UserError(
                f"fb:{class_name} measures perturbations in L{p:g}; only linf, l2 and l0 are supported"
            )
        tm = _P_TO_TM[p]
    key = (class_name, tm)
    if key in _CACHE:
        return _CACHE[key]
    bounded = issubclass(lib_cls, fb.attacks.base.FixedEpsilonAttack)
    defaults["threat_model"] = None
    doc = (inspect.getdoc(lib_cls) or "").strip().splitlines()
    summary = f"foolbox.attacks.{class_name}" + (f": {doc[0]}" if doc else "")
    attrs = {
        "__doc__": summary,
        "__module__": __name__,
        "name": f"fb:{class_name}",
        "threat_model": ThreatModel(tm),
        "kind": _kind(class_name),
        "bounded": bounded,
        "iterative": any(k in defaults for k in _ITER_KEYWORDS),
        "randomized": bool(defaults.get("random_start")) or _kind(class_name) != AttackKind.WHITE_BOX,
        "multi_eps": bounded,
        "defaults": defaults,
        # typed from the library's signature: a bad value fails at plan time, not mid-sweep
        "Params": params_from_signature(f"FB_{class_name}_Params", defaults),
        "library_class": lib_cls,
        "required": frozenset(required),
        "takes_distance": takes_distance,
    }
    cls = type(f"FB_{class_name}_{tm}", (FoolboxAttack,), attrs)
    _CACHE[key] = cls
    return cls
