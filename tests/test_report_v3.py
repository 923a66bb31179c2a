"""Report v3: page-1 facts that must not mislead."""

from __future__ import annotations

import pandas as pd

from robustbench_lta.reporting.protocol import strength_at


def _rows(accs: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame([{"model": "m", "norm": "linf", "attack": a, "status": "ok", "eps": 8 / 255,
                          "robust_acc": r} for a, r in accs.items()])


def test_a_tie_names_the_stronger_attack_family_not_the_single_step_one() -> None:
    specs = {"fgsm": ("fgsm", {}), "pgd-linf": ("pgd-linf", {"steps": 10}),
             "gaussian-noise": ("gaussian-noise", {}), "autoattack": ("autoattack", {})}
    assert strength_at(_rows({"fgsm": 0.0, "pgd-linf": 0.0}), specs, "m", "linf", 8 / 255)["strongest"] == \
        ("pgd-linf", 0.0)
    got = strength_at(_rows({"fgsm": 0.0, "gaussian-noise": 0.0, "pgd-linf": 0.0, "autoattack": 0.0}), specs,
                      "m", "linf", 8 / 255)
    assert got["strongest"] == ("autoattack", 0.0) and set(got["strong"]) == {"autoattack"}
    # a lower figure still wins whatever its family
    lower = strength_at(_rows({"fgsm": 0.1, "pgd-linf": 0.2}), specs, "m", "linf", 8 / 255)
    assert lower["strongest"][0] == "fgsm"
    # a cascade row is looked up by its attack's spec
    got = strength_at(_rows({"autoattack (cascade)": 0.05, "fgsm": 0.3}), specs, "m", "linf", 8 / 255)
    assert got["strong"] == {"autoattack (cascade)": "AutoAttack"}


def test_an_outside_models_selection_note_gives_no_retrain_advice() -> None:
    from robustbench_lta.training.selection import selection_note

    zoo = {"source": "robustbench:cifar10/Linf/Standard", "architecture": "WideResNet", "details": {}}
    note = selection_note(zoo, "Standard")
    assert note is not None and "outside model" in note and "Retrain" not in note
    ours = {"source": "runs/x/best.safetensors", "details": {"training": {"epochs": 3}}}
    assert "Retrain" in selection_note(ours, "ours")  # a project checkpoint without a selection section


def test_worst_case_budgets_where_an_attack_did_not_run_are_named() -> None:
    from robustbench_lta.reporting.curves import incomplete_budgets

    rows = [{"model": "m", "norm": "linf", "attack": a, "status": "ok", "eps": e / 255, "robust_acc": 0.5}
            for a, grid in (("fgsm", [0, 2, 4, 8]), ("pgd-linf", [2, 4, 8]), ("autoattack", [8]))
            for e in grid]
    rows.append({"model": "m", "norm": "linf", "attack": "worst-case", "status": "ok", "eps": 4 / 255,
                 "robust_acc": 0.4})
    rows.append({"model": "m", "norm": "linf", "attack": "pgd-linf (cascade)", "status": "ok",
                 "eps": 8 / 255, "robust_acc": 0.3})
    got = incomplete_budgets(pd.DataFrame(rows), "m", "linf")
    assert got == {round(2 / 255, 9): ["autoattack"], round(4 / 255, 9): ["autoattack"]}
