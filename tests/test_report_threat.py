"""The training threat model on the report's page 1, and warnings for budgets beyond it.

Cards are hand-made in the shapes the sweep's manifest stores them: a project checkpoint's card
wrapped under ``details`` by the model source, the bare card (nn.Module specs, older manifests), a
card written before adversarial training existed (no ``threat_model`` key), a standard-trained one,
and a RobustBench zoo card.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from test_reporting import ATT, BASE, _pdf_text, make_results  # the synthetic results folder

from robustbench_lta.reporting.pdf import build_report
from robustbench_lta.reporting.threat import budget_warnings, threat_summary, training_threat
from robustbench_lta.results import WORST_CASE
from robustbench_lta.training.selection import selection_summary

PGD_LINF8 = {
    "label": "PGD-AT, Linf 8/255", "method": "pgd", "norm": "linf", "eps": 8.0, "eps_scale": 255.0,
    "eps_01": 0.03137, "step_01": 0.00784, "steps": 10, "beta": 6.0, "train_steps": 10,
}
SELECTION = {
    "rule": "best robust validation accuracy", "split": "validation", "source_split": "train", "n": 500,
    "fraction": 0.1, "epoch": 7, "val_accuracy": 0.61, "metric": "PGD-10 Linf 8/255 accuracy",
}
OWN = {"model": {"name": "att3"}, "training": {}, "precision": "float32", "threat_model": PGD_LINF8,
       "selection": SELECTION, "catastrophic_overfitting": {"detected": False, "epochs": []}}
STANDARD = {"model": {"name": "vgg16"}, "training": {}, "threat_model": None}
OLD = {"model": {"name": "vgg16"}, "training": {"lr": 0.1}}  # written before adversarial training
ZOO = {"source": "robustbench:cifar10/Linf/Carmon2019Unlabeled", "details": {},
       "published": {"clean_acc": 0.8936, "robust_acc": 0.5953, "attack": "autoattack", "norm": "linf",
                     "eps": 8 / 255, "origin": "RobustBench model_info"}}


def _wrapped(own: dict) -> dict:
    """A project checkpoint's card as a resolved source stores it in the manifest."""
    return {"source": "runs/att3/best.safetensors", "architecture": "att3", "weights_sha256": "ab" * 32,
            "published": None, "details": own}


def _rows(model: str, norm: str, eps: list[float], attack: str = "pgd", status: str = "ok") -> list[dict]:
    return [{"model": model, "attack": attack, "norm": norm, "eps": e, "status": status} for e in eps]


# ------------------------------------------------------------------------------------ training_threat
def test_training_threat_wrapped_and_bare_cards() -> None:
    assert training_threat(OWN) == "PGD-AT, Linf 8/255"
    assert training_threat(_wrapped(OWN)) == "PGD-AT, Linf 8/255"
    assert threat_summary(_wrapped(OWN)) == "training: PGD-AT, Linf 8/255"


def test_training_threat_standard_old_missing_and_zoo() -> None:
    assert training_threat(STANDARD) == training_threat(_wrapped(STANDARD)) == "standard training"
    assert threat_summary(_wrapped(STANDARD)) == "standard training"
    for card in (OLD, _wrapped(OLD), None, {}):
        assert training_threat(card) == "training threat model not recorded"
    # the zoo card names its leaderboard, never a training recipe it does not record
    assert training_threat(ZOO) == (
        "training threat model not recorded (RobustBench Linf 8/255 leaderboard entry)"
    )


def test_training_threat_without_label_is_built_from_the_fields() -> None:
    tm = {"method": "pgd", "norm": "l2", "eps": 0.5, "eps_scale": 1.0}
    assert training_threat({"threat_model": tm}) == "PGD-AT, L2 0.5"


# ------------------------------------------------------------------------------------ budget_warnings
def test_budget_warning_larger_eps_and_other_norm() -> None:
    evaluated = pd.DataFrame(
        _rows("att3@seed0", "linf", [0, 4 / 255, 8 / 255, 12 / 255])
        + _rows("att3@seed0", "linf", [12 / 255], attack=WORST_CASE)
        + _rows("att3@seed0", "linf", [16 / 255], status="failed")  # no accuracy shown: not flagged
        + _rows("att3@seed0", "l2", [np.inf], attack="cw-l2")
    )
    (warning,) = budget_warnings({"att3@seed0": _wrapped(OWN)}, evaluated)
    assert warning == (
        "att3@seed0 was trained against Linf 8/255 (PGD-AT); this sweep also evaluates it at Linf 12/255 "
        "and under L2: robustness there was not trained for, so low accuracy is expected."
    )


def test_no_budget_warning_within_the_training_budget() -> None:
    evaluated = pd.DataFrame(_rows("m", "linf", [0, 4 / 255, 8 / 255]) + _rows("m", "l2", [0.0]))
    assert budget_warnings({"m": OWN}, evaluated) == []
    # a card that stored only the rounded eps_01 still counts 8/255 as within its budget
    rounded = {"threat_model": {"method": "pgd", "norm": "linf", "eps_01": 0.03137}}
    assert budget_warnings({"m": rounded}, evaluated) == []


def test_budget_warning_other_norm_only_and_unflagged_cards() -> None:
    evaluated = pd.DataFrame(
        [r for m in ("at", "std", "old", "zoo", "none") for r in _rows(m, "l2", [0.25, 0.5])]
        + _rows("at", "linf", [4 / 255])
    )
    cards = {"at": OWN, "std": _wrapped(STANDARD), "old": OLD, "zoo": ZOO, "none": None}
    (warning,) = budget_warnings(cards, evaluated)
    assert warning.startswith("at was trained against Linf 8/255 (PGD-AT); this sweep also evaluates it "
                              "under L2:")
    assert budget_warnings(cards, evaluated.iloc[0:0]) == []


# ----------------------------------------------------------------------------------- selection_summary
def test_selection_summary_unwraps_the_source_card() -> None:
    expected = ("selection: best robust validation accuracy on a validation split of 500 train images (10%) "
                "epoch 7, val acc 61.0%")
    assert selection_summary(_wrapped(OWN)) == selection_summary(OWN) == expected
    assert selection_summary(ZOO) == "selection: not recorded"


# ------------------------------------------------------------------------------------------ end to end
def test_page_one_shows_threat_model_and_budget_warning(tmp_path: Path) -> None:
    folder = make_results(tmp_path / "run")
    man = json.loads((folder / "manifest.json").read_text())
    man["models"][ATT]["card"] = _wrapped(OWN)  # the synthetic sweep also ran cw-l2: an L2 attack
    man["models"][BASE]["card"] = _wrapped(STANDARD)
    (folder / "manifest.json").write_text(json.dumps(man))
    res = build_report([folder], tmp_path / "t.pdf")
    _, text = _pdf_text(res.pdf)
    # textwrap may break a line after a hyphen ("PGD-" / "AT"): undo that before matching
    first = text.split("2. Robustness curves")[0].replace("- ", "-")
    assert "epoch 7, val acc 61.0%; training: PGD-AT, Linf 8/255" in first
    assert "selection: not recorded; standard training" in first
    assert f"{ATT} was trained against Linf 8/255 (PGD-AT); this sweep also evaluates it under L2" in first
    assert any(w.startswith(f"{ATT} was trained against Linf 8/255") for w in res.warnings)
    assert not any(w.startswith(f"{BASE} was trained") for w in res.warnings)
