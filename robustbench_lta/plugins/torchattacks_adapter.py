"""Run any torchattacks attack by name: ``ta:<ClassName>`` (e.g. ``ta:PGD``, ``ta:APGDT``).

The adapter class is built on demand from the torchattacks class:

- parameters: every keyword of the class's constructor except ``model`` and the budget keyword,
  with the library's defaults; a config may override any of them (unknown ones: UserError);
- budget: ``eps`` (``max_epsilon`` for PIFGSM) is passed from the sweep's eps; classes without
  one (CW, DeepFool, JSMA, ...) are minimal-perturbation attacks and get ``bounded = False``;
- threat model: the ``threat_model`` parameter if given, else the library's ``norm`` parameter,
  else a table of known classes, else ``l2`` when the class name says L2 and ``linf`` otherwise;
  when ``threat_model`` is set and the class takes ``norm``, ``norm`` follows it;
- ``n_classes`` (APGDT, FAB, AutoAttack) is inferred from one forward pass unless given; ``seed``
  defaults to the attack's seed.

torchattacks draws from torch's global RNG, so every call runs inside :meth:`Attack.global_rng`
(forked and seeded with the attack's seed; the caller's RNG state is restored) and with the
model's parameters frozen (some attacks call ``loss.backward()``, which would otherwise leave
gradients on the weights). The model's train/eval mode is restored by torchattacks itself.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import UserError
from .base import Attack, AttackKind, ThreatModel, params_from_signature

_EPS_KEYWORDS = ("eps", "max_epsilon")
_ITER_KEYWORDS = ("steps", "n_queries", "num_iter_set", "max_iterations", "nb_iter", "restarts")
_NOT_SUPPORTED = {"Attack", "MultiAttack", "LGV"}  # need other attacks / a data loader as arguments
#: norm reported for classes whose name does not say it
_KNOWN_NORM = {
    "CW": "l2",
    "DeepFool": "l2",
    "EADL1": "l2",
    "EADEN": "l2",
    "JSMA": "l0",
    "OnePixel": "l0",
    "Pixle": "l0",
    "SparseFool": "l0",
    "GN": "linf",
    "VANILA": "none",
}
_KNOWN_KIND = {
    "Square": AttackKind.SCORE,
    "SPSA": AttackKind.SCORE,
    "OnePixel": AttackKind.SCORE,
    "Pixle": AttackKind.SCORE,
    "GN": AttackKind.RANDOM,
    "VANILA": AttackKind.RANDOM,
}
_RANDOMIZED = {
    "Square",
    "SPSA",
    "OnePixel",
    "Pixle",
    "GN",
    "APGD",
    "APGDT",
    "FAB",
    "AutoAttack",
    "EOTPGD",
    "DIFGSM",
    "TIFGSM",
    "Jitter",
    "PGDRS",
    "PGDRSL2",
    "VMIFGSM",
    "VNIFGSM",
    "RFGSM",
    "FFGSM",
    "PIFGSM",
    "PIFGSMPP",
}
_NORM_TO_TM = {"linf": "linf", "l2": "l2", "l0": "l0", "l1": None}
_TM_TO_NORM = {"linf": "Linf", "l2": "L2"}

_CACHE: dict[tuple[str, str], type[Attack]] = {}


def _library() -> Any:
    try:
        import torchattacks
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise UserError("ta:... attacks need torchattacks: pip install torchattacks") from exc
    return torchattacks


def _library_class(class_name: str) -> type:
    ta = _library()
    base = ta.attack.Attack
    names = sorted(
        n
        for n in dir(ta)
        if isinstance(getattr(ta, n), type) and issubclass(getattr(ta, n), base) and n not in _NOT_SUPPORTED
    )
    cls = getattr(ta, class_name, None)
    if class_name in _NOT_SUPPORTED:
        raise UserError(f"ta:{class_name} cannot be built from a config (it takes objects as arguments)")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        close = difflib.get_close_matches(class_name, names, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join('ta:' + c for c in close)}?)" if close else ""
        raise UserError(f"torchattacks has no attack class '{class_name}'{hint}; names are case-sensitive")
    return cls


def _signature(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pname, p in inspect.signature(cls.__init__).parameters.items():
        if pname in ("self", "model") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[pname] = None if p.default is inspect.Parameter.empty else p.default
    return out


def _resolve_threat_model(class_name: str, sig: dict[str, Any], params: dict[str, Any]) -> str:
    if params.get("threat_model") is not None:
        value = str(params["threat_model"]).lower()
        if value not in {t.value for t in ThreatModel}:
            raise UserError(
                f"ta:{class_name}: threat_model {params['threat_model']!r} is invalid; "
                "use linf, l2, l0 or none"
            )
        return value
    if "norm" in sig:
        norm = str(params.get("norm", sig["norm"])).lower()
        if _NORM_TO_TM.get(norm) is None:
            raise UserError(f"ta:{class_name}: norm {norm!r} is not supported; use 'Linf' or 'L2'")
        return _NORM_TO_TM[norm]
    if class_name in _KNOWN_NORM:
        return _KNOWN_NORM[class_name]
    return "l2" if "L2" in class_name else "linf"


class TorchattacksAttack(Attack):
    """Base of the generated ``ta:<ClassName>`` adapters (not registered itself)."""

    library_class: ClassVar[type | None] = None
    eps_keyword: ClassVar[str | None] = None
    signature: ClassVar[dict[str, Any]] = {}
    source = "adapter:torchattacks"

    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        super().__init__(seed=seed, **params)
        self._explicit = set(params)

    def _library_kwargs(self, model: nn.Module, x: torch.Tensor, eps: float) -> dict[str, Any]:
        kwargs = {k: v for k, v in self.params.items() if k != "threat_model"}
        if self.eps_keyword is not None:
            kwargs[self.eps_keyword] = float(eps)
        if "norm" in self.signature and "norm" not in self._explicit and "threat_model" in self._explicit:
            kwargs["norm"] = _TM_TO_NORM.get(self.threat_model.value, kwargs["norm"])
        if "n_classes" in self.signature and "n_classes" not in self._explicit:
            with torch.no_grad():
                kwargs["n_classes"] = int(model(x[:1]).shape[1])
        if "seed" in self.signature and "seed" not in self._explicit:
            kwargs["seed"] = self.seed
        return kwargs

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        assert self.library_class is not None
        kwargs = self._library_kwargs(model, x, eps)
        with self.frozen(model), self.global_rng(x.device), torch.enable_grad():
            try:
                attack = self.library_class(model, **kwargs)
            except (TypeError, ValueError) as exc:
                raise UserError(f"{self.name}: bad parameters for torchattacks: {exc}") from exc
            out = attack(x, y)
        if isinstance(out, (tuple, list)):  # some versions return (adv_images, extra)
            out = out[0]
        return out.detach().to(device=x.device, dtype=x.dtype)


def torchattacks_attack_class(class_name: str, params: dict[str, Any] | None = None) -> type[Attack]:
    """The adapter class for ``ta:<class_name>`` (cached per class and threat model)."""
    params = params or {}
    lib_cls = _library_class(class_name)
    sig = _signature(lib_cls)
    tm = _resolve_threat_model(class_name, sig, params)
    key = (class_name, tm)
    if key in _CACHE:
        return _CACHE[key]
    eps_keyword = next((k for k in _EPS_KEYWORDS if k in sig), None)
    defaults = {k: v for k, v in sig.items() if k != eps_keyword}
    defaults["threat_model"] = None
    iterative = any(k in sig for k in _ITER_KEYWORDS)
    randomized = class_name in _RANDOMIZED or bool(sig.get("random_start"))
    doc = (inspect.getdoc(lib_cls) or "").strip().splitlines()
    summary = f"torchattacks.{class_name}" + (f": {doc[0]}" if doc else "")
    attrs = {
        "__doc__": summary,
        "__module__": __name__,
        "name": f"ta:{class_name}",
        "threat_model": ThreatModel(tm),
        "kind": _KNOWN_KIND.get(class_name, AttackKind.WHITE_BOX),
        "bounded": eps_keyword is not None,
        "iterative": iterative,
        "randomized": randomized,
        "multi_eps": False,
        "defaults": defaults,
        # typed from the library's signature: a bad value fails at plan time, not mid-sweep
        "Params": params_from_signature(f"TA_{class_name}_Params", defaults),
        "library_class": lib_cls,
        "eps_keyword": eps_keyword,
        "signature": sig,
    }
    cls = type(f"TA_{class_name}_{tm}", (TorchattacksAttack,), attrs)
    _CACHE[key] = cls
    return cls
