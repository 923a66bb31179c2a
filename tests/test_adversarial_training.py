"""Adversarial training (issue 21): the threat model in the config, one PGD shared with the sweep,
TRADES' loss by hand, robust selection, catastrophic overfitting, bf16 on CPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustbench_lta import devices
from robustbench_lta.config import AdversarialSpec, TrainConfig, validate
from robustbench_lta.errors import UserError
from robustbench_lta.models.registry import create_model
from robustbench_lta.plugins import get_attack
from robustbench_lta.training.adversarial import (
    AdversarialLoss,
    RobustValidation,
    is_collapsed,
    trades_loss,
)
from robustbench_lta.training.checkpoint import load_model


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("smallcnn", num_classes=10, width=0.25).eval()


def _batch(n: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_training_attack_equals_the_sweeps_pgd(norm: str) -> None:
    """Same seed and parameters: the trainer's PGD examples are the sweep's pgd-linf/pgd-l2 (keep=last)."""
    model, (x, y) = _model(), _batch()
    eps, step = (8.0, 2.0) if norm == "linf" else (128.0, 32.0)
    spec = AdversarialSpec(method="pgd", norm=norm, eps=eps, step_size=step, steps=5)
    ours = AdversarialLoss(spec).examples(model, x, y, torch.Generator().manual_seed(7))
    attack = get_attack(f"pgd-{norm}", seed=7, steps=5, alpha=step / 255, keep="last")
    theirs = attack(model, x, y, eps / 255)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, x)  # it moved
    delta = (ours - x).flatten(1)
    bound = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert float(bound.max()) <= eps / 255 + 1e-6 and float(ours.min()) >= 0 and float(ours.max()) <= 1


def test_a_margin_loss_threat_model_ascends_the_sweeps_margin_pgd() -> None:
    """``adversarial.loss: margin``: the trainer's examples are the sweep's ``pgd-linf:loss=margin``."""
    model, (x, y) = _model(), _batch()
    spec = AdversarialSpec(method="pgd", eps=8.0, step_size=2.0, steps=5, loss="margin")
    ours = AdversarialLoss(spec).examples(model, x, y, torch.Generator().manual_seed(7))
    attack = get_attack("pgd-linf", seed=7, steps=5, alpha=2 / 255, keep="last", loss="margin")
    assert torch.equal(ours, attack(model, x, y, 8 / 255))
    ce = AdversarialLoss(spec.model_copy(update={"loss": "ce"})).examples(
        model, x, y, torch.Generator().manual_seed(7))
    assert not torch.equal(ours, ce)  # another objective, other examples
    assert spec.label() == "PGD-AT (margin loss), Linf 8/255"
    with pytest.raises(ValueError, match="adversarial.loss 'margin' applies to pgd"):
        AdversarialSpec(method="trades", loss="margin")


def test_fgsm_rs_is_one_step_of_1_25_eps_from_a_random_start() -> None:
    spec = AdversarialSpec(method="fgsm-rs", eps=8.0)
    assert spec.train_steps == 1 and spec.step01 == pytest.approx(1.25 * 8 / 255)
    model, (x, y) = _model(), _batch()
    adv = AdversarialLoss(spec).examples(model, x, y, torch.Generator().manual_seed(3))
    assert float((adv - x).abs().max()) <= 8 / 255 + 1e-6
    # the random start: with another seed the examples differ
    other = AdversarialLoss(spec).examples(model, x, y, torch.Generator().manual_seed(4))
    assert not torch.equal(adv, other)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_n_fgsm_is_one_unprojected_step_of_eps_from_twice_eps_noise(norm: str) -> None:
    """N-FGSM by hand: uniform noise of 2 eps, one signed (Linf) or normalised (L2) step of eps, kept
    outside the eps-ball (up to 3 eps), clipped to [0,1] only."""
    eps = 8.0 if norm == "linf" else 128.0
    spec = AdversarialSpec(method="n-fgsm", norm=norm, eps=eps)
    assert spec.train_steps == 1 and spec.step01 == pytest.approx(eps / 255)
    model, (x, y) = _model(), _batch()
    adv = AdversarialLoss(spec).examples(model, x, y, torch.Generator().manual_seed(3))
    e = eps / 255
    g = torch.Generator().manual_seed(3)
    if norm == "linf":
        start = (x + (2 * torch.rand(x.shape, generator=g) - 1) * 2 * e).clamp(0, 1)
    else:
        d = torch.randn(x.shape, generator=g)
        r = torch.rand((x.shape[0], 1, 1, 1), generator=g)
        start = (x + d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * r * 2 * e).clamp(0, 1)
    x_in = start.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), y, reduction="sum"), x_in)
    if norm == "linf":
        step = grad.sign()
    else:
        step = grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    hand = (start + e * step).clamp(0, 1)
    assert torch.allclose(adv, hand, atol=1e-6)
    delta = (adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) > e * 1.01  # not projected back to the eps-ball
    assert float(size.max()) <= 3 * e + 1e-5
    assert spec.label().startswith("N-FGSM")


def test_trades_loss_equals_a_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    logits_nat, logits_adv = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g)
    y = torch.tensor([0, 3, 9, 2, 2])
    beta = 6.0
    ce = sum(-torch.log_softmax(logits_nat[i], 0)[y[i]] for i in range(5)) / 5
    p, q = torch.softmax(logits_nat, 1), torch.softmax(logits_adv, 1)
    kl = sum(float((p[i] * (p[i].log() - q[i].log())).sum()) for i in range(5)) / 5
    expected = float(ce) + beta * kl
    assert float(trades_loss(logits_nat, logits_adv, y, beta)) == pytest.approx(expected, rel=1e-5)


def test_trades_training_loss_on_a_fixed_batch() -> None:
    """The whole TRADES step: eval-mode inner maximisation, then CE + beta KL on the train-mode model."""
    import copy

    model, (x, y) = _model(), _batch()
    spec = AdversarialSpec(method="trades", eps=8.0, steps=3, beta=6.0)
    reference = copy.deepcopy(model)
    loss, logits = AdversarialLoss(spec)(model.train(), x, y, torch.Generator().manual_seed(5))
    # by hand: the same start (x + 0.001 N(0,1) from the same seed), 3 signed KL steps of eps/4
    reference.eval()
    with torch.no_grad():
        p_nat = F.softmax(reference(x), 1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    x_adv, eps, step = x + 0.001 * noise, 8 / 255, 2 / 255
    for _ in range(3):
        x_in = x_adv.clone().requires_grad_(True)
        kl = F.kl_div(F.log_softmax(reference(x_in), 1), p_nat, reduction="sum")
        (grad,) = torch.autograd.grad(kl, x_in)
        x_adv = torch.min(torch.max(x_adv + step * grad.sign(), x - eps), x + eps).clamp(0, 1).detach()
    reference.train()
    nat, adv = reference(x), reference(x_adv)
    hand = F.cross_entropy(nat, y) + 6.0 * F.kl_div(F.log_softmax(adv, 1), F.softmax(nat, 1),
                                                     reduction="sum") / len(y)
    assert float(loss.detach()) == pytest.approx(float(hand.detach()), rel=1e-5)
    assert torch.allclose(logits, nat)


def test_collapse_rule() -> None:
    hist = [{"robust_val_acc": 0.30, "fgsm_val_acc": 0.40, "collapsed": False},
            {"robust_val_acc": 0.34, "fgsm_val_acc": 0.42, "collapsed": False}]
    assert is_collapsed(hist, RobustValidation(0.05, 0.70, 100), 0.5)  # PGD collapses, FGSM rises
    assert not is_collapsed(hist, RobustValidation(0.05, 0.08, 100), 0.5)  # both fall: not masking
    assert not is_collapsed(hist, RobustValidation(0.20, 0.80, 100), 0.5)  # above half the best
    # FGSM falls, but by far less than PGD: the single-step attack stopped tracking the multi-step one
    assert is_collapsed(hist, RobustValidation(0.05, 0.38, 100), 0.5)
    hist.append({"robust_val_acc": 0.02, "fgsm_val_acc": 0.9, "collapsed": True})
    assert is_collapsed(hist, RobustValidation(0.03, 0.85, 100), 0.5)  # stays collapsed
    assert not is_collapsed([], RobustValidation(0.0, 0.9, 100), 0.5)


def test_collapse_rule_on_the_attention_networks_real_collapse() -> None:
    """vgg16_att3_concat_pc width 0.125, FGSM-RS 8/255, OneCycle lr 0.1 (runs/study3, seed 0): at epoch 3
    PGD-10 validation accuracy fell to 0.0 % while FGSM accuracy fell only from 32.4 % to 26.6 %."""
    hist = [{"robust_val_acc": 0.074, "fgsm_val_acc": 0.254, "collapsed": False},
            {"robust_val_acc": 0.082, "fgsm_val_acc": 0.324, "collapsed": False}]
    assert is_collapsed(hist, RobustValidation(0.0, 0.266, 500), 0.5)
    # robust overfitting late in PGD-AT (both fall together, PGD by less than half) is not a collapse
    late = [{"robust_val_acc": 0.40, "fgsm_val_acc": 0.48, "collapsed": False}]
    assert not is_collapsed(late, RobustValidation(0.18, 0.30, 500), 0.5)


def _adv_cfg(out: Path, **adversarial: object) -> TrainConfig:
    return validate(TrainConfig, {
        "model": {"name": "smallcnn", "width": 0.25},
        "data": {"name": "cluttered-digits", "n_train": 160, "n_test": 32},
        "epochs": 2, "batch_size": 32, "lr": 0.05, "seed": 1, "device": "cpu", "out": str(out),
        "val_fraction": 0.2, "adversarial": {"method": "pgd", "eps": 8, "steps": 2, "eval_steps": 3,
                                            "eval_n": 32, **adversarial},
    }, "test")


def test_pgd_training_records_the_threat_model_and_selects_on_robust_accuracy(tmp_path: Path) -> None:
    from robustbench_lta.training.trainer import train

    result = train(_adv_cfg(tmp_path / "pgd"), progress=False)
    rows = list(csv.DictReader((tmp_path / "pgd" / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(r["robust_val_acc"] != "" and r["fgsm_val_acc"] != "" for r in rows)
    robust = [float(r["robust_val_acc"]) for r in rows]
    assert result.best_acc == max(robust) and result.best_epoch == 1 + robust.index(max(robust))
    card = json.loads((tmp_path / "pgd" / "best.json").read_text())
    assert card["threat_model"]["label"] == "PGD-AT, Linf 8/255"
    assert card["threat_model"]["eps_01"] == pytest.approx(8 / 255)
    assert card["selection"]["rule"] == "best robust validation accuracy"
    assert "PGD-3 Linf 8/255" in card["selection"]["metric"]
    assert card["catastrophic_overfitting"] == {"detected": False, "epochs": []}
    assert card["precision"] in ("float32", "bf16 autocast")
    load_model(tmp_path / "pgd" / "best.safetensors")
    # a changed threat model cannot resume the same folder
    from robustbench_lta.training.trainer import train as again

    with pytest.raises(UserError, match="adversarial.eps"):
        again(_adv_cfg(tmp_path / "pgd", eps=4), progress=False)


def test_fast_at_catastrophic_overfitting_is_flagged_and_never_selected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's bookkeeping around a collapse: flagged in history, log and card, not selected.

    The validation figures are scripted (a collapse on a tiny CPU run is not reproducible in seconds;
    benchmarks/fast_at_collapse.py pushes real fast AT into it); everything else is the real trainer.
    """
    from robustbench_lta.training import trainer

    script = iter([RobustValidation(0.30, 0.35, 32), RobustValidation(0.02, 0.80, 32),
                   RobustValidation(0.01, 0.85, 32)])
    monkeypatch.setattr(trainer, "robust_validation", lambda *a, **k: next(script))
    cfg = _adv_cfg(tmp_path / "co", method="fgsm-rs", eps=16).model_copy(update={"epochs": 3})
    result = trainer.train(cfg, progress=False)
    assert result.collapsed_epochs == [2, 3]
    assert result.best_epoch == 1
    rows = list(csv.DictReader((tmp_path / "co" / "history.csv").open()))
    assert [r["collapsed"] for r in rows] == ["False", "True", "True"]
    card = json.loads((tmp_path / "co" / "last.json").read_text())
    assert card["catastrophic_overfitting"] == {"detected": True, "epochs": [2, 3]}


def test_amp_auto_on_cpu_follows_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert devices.amp_dtype("auto", cpu, native=True) == torch.bfloat16
    assert devices.amp_dtype("auto", cpu, native=False) is None
    assert devices.amp_dtype("fp16", cpu, native=True) is None
    assert devices.amp_dtype("auto", "cuda", native=False) == torch.float16  # pre-Ampere: fp16, not bf16
    assert devices.cpu_has_native_bf16("flags\t: fpu avx512f avx512_bf16\n")
    assert devices.cpu_has_native_bf16("flags\t: fpu amx_bf16 amx_tile\n")
    assert not devices.cpu_has_native_bf16("flags\t: fpu avx2 avx512f\n")
    assert not devices.cuda_has_native_bf16((7, 5)) and devices.cuda_has_native_bf16((8, 0))
