"""Demo v3: AutoAttack restricted to part of its standard version, and the report's table packing.

The demo runs the authors' APGD-CE and APGD-T with the standard settings (`autoattack` with
`attacks: [apgd-ce, apgd-t]`); the report must say that this is not the full evaluation. A
caption-only table ("Every cell finished ok.") no longer takes a page of its own.
"""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest
import torch
from torch import nn

from robustbench_lta import UserError
from robustbench_lta.plugins.registry import get_attack
from robustbench_lta.plugins.strength import attack_strength, family_rank, strength_tag

needs_aa = pytest.mark.skipif(importlib.util.find_spec("pyautoattack") is None,
                              reason="the authors' AutoAttack (pyautoattack) is not installed")


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 10)).eval()


@needs_aa
def test_subset_keeps_the_standard_settings() -> None:
    import sys

    from robustbench_lta.plugins.registry import get_attack_class

    # the built-in attack's own module (importing the file again would register it twice)
    _standard_subset = sys.modules[get_attack_class("autoattack").__module__]._standard_subset
    aa = _standard_subset(_tiny_model(), "Linf", 8 / 255, 0, torch.device("cpu"), ["apgd-t", "apgd-ce"])
    # the standard version's order, whatever order the user wrote
    assert aa.attacks_to_run == ["apgd-ce", "apgd-t"]
    # 'custom' alone would keep the constructor's 5 restarts for APGD and FAB
    assert aa.apgd.n_restarts == 1 and aa.apgd_targeted.n_restarts == 1 and aa.fab.n_restarts == 1
    assert aa.apgd_targeted.n_target_classes == 9 and aa.fab.n_target_classes == 9
    assert aa.square.n_queries == 5000 and aa.apgd.n_iter == 100 and aa.apgd_targeted.n_iter == 100


@needs_aa
def test_subset_attack_stays_in_budget() -> None:
    model = _tiny_model()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    attack = get_attack("autoattack", seed=0, attacks=["apgd-ce", "apgd-t"])
    adv = attack.perturb(model, x, y, 8 / 255)
    assert adv.shape == x.shape and float((adv - x).abs().max()) <= 8 / 255 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


@pytest.mark.parametrize(("params", "needle"), [
    ({"attacks": ["fab"]}, "subset of the standard version"),
    ({"attacks": []}, "non-empty subset"),
    ({"attacks": ["apgd-ce"], "version": "plus"}, "with version 'standard'"),
])
def test_subset_refuses_what_it_cannot_run(params: dict, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        get_attack("autoattack", seed=0, **params)


def test_strength_names_the_subset() -> None:
    assert attack_strength("autoattack", {}) == "AutoAttack"
    assert attack_strength("autoattack", {"attacks": ["apgd-ce", "apgd-t"]}) == \
        "AutoAttack (apgd-ce + apgd-t only)"
    assert family_rank("autoattack", {"attacks": ["apgd-ce", "apgd-t"]}) == 0  # still a strong attack
    # the report's tag beside the name, read back from the same module that wrote the reason
    assert strength_tag(attack_strength("autoattack", {"attacks": ["apgd-ce", "apgd-t"]})) == \
        "strong; apgd-ce + apgd-t only"
    assert strength_tag(attack_strength("autoattack", {})) == "strong"
    assert strength_tag(attack_strength("pgd-linf", {"steps": 50})) == "strong"
    assert strength_tag(attack_strength("fgsm", {})) == "weak"


def test_caption_only_table_joins_the_page_before(tmp_path) -> None:
    from matplotlib.backends.backend_pdf import PdfPages

    from robustbench_lta.reporting.pages import PageSink

    table = pd.DataFrame({"a": [str(i) for i in range(22)], "b": ["x"] * 22})
    items = [("A table that fills most of a page.", table, None)]

    def pages(extra: list) -> int:
        with PdfPages(tmp_path / f"t{len(extra)}.pdf") as pdf:
            sink = PageSink(pdf=pdf, png_dir=tmp_path)
            sink.table_stack("Tables", items + extra)
            return sink.pages

    alone = pages([])
    empty = ("Cells that did not finish. Every cell finished ok.", pd.DataFrame(), None)
    assert pages([empty]) == alone == 1
    # a real table that does not fit still starts a new page
    assert pages([("Another table.", table, None)]) == 2


def test_swap_in_folder_puts_everything_back_when_the_follow_up_fails(tmp_path) -> None:
    """The PDF's and the HTML report's shared swap: a failing follow-up (the PDF's own rename) leaves
    the old folder in place and the staged one where it was."""
    from robustbench_lta.utils import swap_in_folder

    target, staged = tmp_path / "out_files", tmp_path / ".staged"
    target.mkdir()
    (target / "old.png").write_text("old")
    staged.mkdir()
    (staged / "new.png").write_text("new")

    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        swap_in_folder(staged, target, then=fail)
    assert (target / "old.png").read_text() == "old" and not (target / "new.png").exists()
    assert (staged / "new.png").read_text() == "new"
    swap_in_folder(staged, target)
    assert sorted(p.name for p in target.iterdir()) == ["new.png"] and not staged.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".old")] == []
