"""What a reviewer checks before trusting a verdict: comparable inputs, strong attacks, clean selection.

- :func:`comparability_problems`: results folders that used different data or different samples
  cannot be compared (``report`` refuses them unless ``--force``).
- :func:`attack_strength` / :func:`strength_at`: is the worst case backed by a strong attack
  (AutoAttack, or PGD/APGD with at least
  :data:`~robustbench_lta.plugins.strength.STRONG_STEPS` steps)? Without one, robust accuracy is
  only an upper bound from weak attacks, and page 1 says so.
- :func:`strong_attack_config`: the sweep config that adds AutoAttack at the headline budget to the
  same results folder (resuming reuses every finished cell and folds the new attack into the
  worst case).
- :func:`selection_notes`: checkpoints chosen on the evaluated split, or whose card does not say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..plugins.strength import attack_strength, family_rank
from ..results import CASCADE_SUFFIX, EPS_TOL, WORST_CASE
from ..training.selection import selection_note

STRONG_ATTACK = "autoattack"  # what the report tells users to add


# ------------------------------------------------------------------------------------- comparability
def _sample_key(samples: pd.DataFrame | None) -> frozenset | None:
    if samples is None or samples.empty:
        return None
    first = samples.drop_duplicates("index")
    return frozenset(zip(first["index"].astype(int), first["label"].astype(int), strict=True))


def comparability_problems(parts: list[dict[str, Any]]) -> list[str]:
    """Reasons why results folders (``label``, ``manifest``, ``summary``, ``samples``) are not comparable.

    Two folders compare only when they evaluated the same data (the manifests' dataset fingerprint,
    else the dataset names and n) on the same samples (index and label of every sample).
    """
    problems: list[str] = []
    if len(parts) < 2:
        return problems
    ref = parts[0]

    def fp(part: dict[str, Any]) -> Any:
        ds = (part["manifest"].get("dataset") or {}) if part["manifest"] else {}
        fpr = ds.get("fingerprint") or {}
        return fpr.get("sha256") if isinstance(fpr, dict) else None

    def names(part: dict[str, Any]) -> tuple[str, int]:
        s = part["summary"]
        return (
            ", ".join(sorted(set(s["dataset"].astype(str)))) if "dataset" in s else "unknown",
            int(s["n"].max()) if len(s) else 0,
        )

    for part in parts[1:]:
        a, b = fp(ref), fp(part)
        if a and b and a != b:
            problems.append(
                f"'{ref['label']}' and '{part['label']}' evaluated different data (dataset fingerprints "
                f"{a[:12]} vs {b[:12]}: {names(ref)[0]}, n={names(ref)[1]} vs {names(part)[0]}, "
                f"n={names(part)[1]})"
            )
            continue
        if (not a or not b) and names(ref) != names(part):
            problems.append(
                f"'{ref['label']}' and '{part['label']}' evaluated different data "
                f"({names(ref)[0]}, n={names(ref)[1]} vs {names(part)[0]}, n={names(part)[1]})"
            )
            continue
        ka, kb = _sample_key(ref["samples"]), _sample_key(part["samples"])
        if ka is not None and kb is not None and ka != kb:
            problems.append(
                f"'{ref['label']}' and '{part['label']}' evaluated different samples "
                f"({len(ka & kb)} of {len(ka)} and {len(kb)} sample index/label pairs in common)"
            )
    return problems


# ------------------------------------------------------------------------------------------ strength
# what makes an attack strong, and the family ranking, live in the plugins layer: the engine picks the
# attention figure's attack by the same ranking (one definition for both)


def attack_specs(manifest: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Attack label -> (registered name, parameters) from a manifest."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for label, info in (manifest.get("attacks") or {}).items():
        if isinstance(info, dict):
            out[str(label)] = (str(info.get("name") or label), dict(info.get("params") or {}))
    return out


def _spec(label: str, specs: dict[str, tuple[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    """A label's (name, params); a cascade row ("pgd-linf (cascade)") is the cascade up to that attack,
    so its spec is the attack's."""
    return specs.get(label) or specs.get(label.removesuffix(CASCADE_SUFFIX), (label, {}))


def strength_at(
    summary: pd.DataFrame, specs: dict[str, tuple[str, dict[str, Any]]], model: str, norm: str, eps: float
) -> dict[str, Any]:
    """For one model, norm and eps: the attacks that ran ok, which of them are strong, the strongest.

    "Strongest" is the attack with the lowest robust accuracy at ``eps`` (ties: the strong one).
    """
    rows = summary[
        (summary["model"] == model)
        & (summary["norm"] == norm)
        & (summary["attack"] != WORST_CASE)
        & (summary["status"] == "ok")
        & ((summary["eps"].astype(float) - eps).abs() <= EPS_TOL)
    ]
    attacks = sorted(set(rows["attack"].astype(str)))
    strong = {}
    for a in attacks:
        why = attack_strength(*_spec(a, specs))
        if why:
            strong[a] = why
    best = None
    if len(rows):
        # ties in robust accuracy: the stronger family is named (strong, multi-step, single-step)
        r = rows.assign(_s=[family_rank(*_spec(str(a), specs)) for a in rows["attack"]])
        r = r.sort_values(["robust_acc", "_s", "attack"], kind="stable")
        best = (str(r["attack"].iloc[0]), float(r["robust_acc"].iloc[0]))
    return {"attacks": attacks, "strong": strong, "strongest": best}


def strong_attack_config(manifest: dict[str, Any], folder: Path, eps: float) -> dict[str, Any] | None:
    """The manifest's sweep config plus AutoAttack at ``eps`` into ``folder`` (None: not rebuildable)."""
    cfg = manifest.get("config")
    if not isinstance(cfg, dict) or not cfg.get("models") or not cfg.get("attacks"):
        return None
    if any(str(m.get("source", "")).startswith("module:") for m in cfg["models"]):
        return None  # models passed as Python objects: no command line can rebuild them
    cfg = {k: v for k, v in cfg.items() if v is not None}
    labels = {a.get("label") or a.get("name") for a in cfg["attacks"]}
    label = STRONG_ATTACK if STRONG_ATTACK not in labels else f"{STRONG_ATTACK}-headline"
    scale = float(cfg.get("eps_scale") or 255.0)
    value = float(np.round(eps * scale, 6))
    cfg["attacks"] = [*cfg["attacks"], {"name": STRONG_ATTACK, "label": label, "eps": [value]}]
    cfg["out"] = str(folder.resolve())
    return cfg


# ---------------------------------------------------------------------------------------- selection
def model_cards(manifests: dict[str, dict[str, Any]], model_folder: dict[str, str]) -> dict[str, Any]:
    """Model label (as the report shows it) -> the card the sweep stored in its manifest (or None)."""
    out: dict[str, Any] = {}
    for label, folder in model_folder.items():
        models = (manifests.get(folder) or {}).get("models") or {}
        info = models.get(label.split(" [")[0]) if isinstance(models, dict) else None
        card = info.get("card") if isinstance(info, dict) else None
        if isinstance(info, dict) and ("registry" in (info.get("fingerprint") or {}) or str(
                (card or {}).get("source", "")).startswith("registry:")):
            continue  # a registry architecture, not a checkpoint: nothing was selected
        out[label] = info.get("card") if isinstance(info, dict) else None
    return out


def selection_notes(cards: dict[str, Any], evaluated_split: str = "test") -> list[str]:
    """One sentence per model whose checkpoint may have been chosen on the evaluated split."""
    by_text: dict[str, list[str]] = {}  # the same sentence for several models: said once, naming them all
    for label, card in sorted(cards.items()):
        note = selection_note(card, label, evaluated_split)
        if note:
            rest = note.removeprefix(f"{label}: ")
            by_text.setdefault(rest if rest != note else note, []).append(label if rest != note else "")
    return [f"{', '.join(labels)}: {text}" if all(labels) else text for text, labels in by_text.items()]
