"""The sanity checks must trip on the models they exist for, not only pass on good ones.

Each test wraps a small, exactly-known classifier in a known trap and runs a real sweep:
- a non-differentiable quantisation step in forward (classic gradient masking: zero input gradients,
  PGD at a huge budget cannot move the accuracy);
- saturated logits (logits x 1e4: the softmax is exactly one-hot in float32, so the cross-entropy
  gradient of every confidently correct sample is exactly zero);
- a stochastic model (noise on the logits at test time);
- a model left in train mode: the engine must evaluate it in eval mode (same numbers as the eval
  model); one whose ``train()`` ignores ``eval()`` is caught by the determinism check.

The classifier needs no training (seconds matter on a shared CPU): 4 classes, class c makes
quadrant c of a 16x16 image brighter, the logits are the quadrant means (x 10). It is 100 %
accurate, smooth, and breaks easily at a large eps, so the healthy version passes every check.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from robustbench_lta import run_sweep

N = 48


class QuadrantNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1] // 2
        quads = [x[..., :h, :h], x[..., :h, h:], x[..., h:, :h], x[..., h:, h:]]
        means = torch.stack([q.mean(dim=(1, 2, 3)) for q in quads], dim=1)
        return 10.0 * (means - means.mean(dim=1, keepdim=True))


def load_model(_: object = None) -> nn.Module:
    return QuadrantNet()


class Quantised(nn.Module):
    """Rounds inputs to 8 bits before the model: torch.round has a zero gradient everywhere."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 255) / 255)


class Saturated(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 1e4


class Noisy(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        return logits + 0.5 * logits.std() * torch.randn_like(logits)


class WithDropout(nn.Module):
    """Dropout on the logits: random in train mode, the identity in eval mode."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.inner(x))


class StuckInTrain(WithDropout):
    """``eval()`` does nothing: the model stays in train mode whatever the caller asks."""

    def train(self, mode: bool = True) -> StuckInTrain:
        return super().train(True)


@pytest.fixture(scope="module")
def base() -> None:
    return None


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(N) % 4
    x = 0.3 + 0.1 * torch.rand(N, 3, 16, 16, generator=gen)
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, 2)
        x[i, :, r * 8:(r + 1) * 8, col * 8:(col + 1) * 8] += 0.4
    return x.clamp(0, 1), y


def _sweep(model: nn.Module, data, tmp_path: Path,
           attacks=("fgsm", "pgd-linf")) -> tuple[pd.DataFrame, pd.DataFrame]:
    summary = run_sweep({"m": model}, list(attacks), [0.0, 8 / 255], data=data, n=N, batch_size=N,
                        out=tmp_path / "res", sanity_samples=32, attention_samples=0, progress=False,
                        channels_last=False)
    sanity = pd.read_csv(Path(summary.attrs.get("out_dir", tmp_path / "res")) / "sanity.csv")
    return summary, sanity


def _status(sanity: pd.DataFrame, check: str) -> str:
    rows = sanity[sanity["check"] == check]
    assert len(rows), f"no {check} row in {sorted(set(sanity['check']))}"
    order = {"fail": 2, "warn": 1, "pass": 0}
    return max(rows["status"], key=lambda s: order.get(s, 0))


def test_a_healthy_model_passes_the_model_checks(base, data, tmp_path):
    _, sanity = _sweep(load_model(base), data, tmp_path)
    for check in ("deterministic", "finite-logits", "returns-logits", "zero-or-nonfinite-gradients"):
        assert _status(sanity, check) == "pass", sanity[sanity["check"] == check].to_dict("records")


def test_quantised_input_is_flagged_as_gradient_masking(base, data, tmp_path):
    from robustbench_lta.cli_checks import sanity_warning

    summary, sanity = _sweep(Quantised(load_model(base)), data, tmp_path)
    grad = sanity[sanity["check"] == "zero-or-nonfinite-gradients"].iloc[0]
    assert grad["status"] == "fail" and grad["value"] == pytest.approx(1.0), grad.to_dict()
    # PGD at 128/255 gets no gradient either, so accuracy stays far above chance
    assert _status(sanity, "near-chance-at-large-eps") == "fail"
    # the cells themselves say `ok` (robust = clean): the CLI must not stay silent about it
    assert (summary["status"] == "ok").all()
    message = sanity_warning(summary)
    assert message and "zero-or-nonfinite-gradients" in message and "near-chance-at-large-eps" in message


def test_no_sanity_warning_for_a_healthy_model(base, data, tmp_path):
    from robustbench_lta.cli_checks import sanity_warning

    summary, _ = _sweep(load_model(base), data, tmp_path)
    assert sanity_warning(summary) is None


def test_saturated_logits_are_flagged(base, data, tmp_path):
    _, sanity = _sweep(Saturated(load_model(base)), data, tmp_path)
    grad = sanity[sanity["check"] == "zero-or-nonfinite-gradients"].iloc[0]
    # every confidently correct sample has an exactly-zero cross-entropy gradient
    assert grad["status"] == "fail" and grad["value"] > 0.05, grad.to_dict()


def test_a_stochastic_model_fails_the_determinism_check(base, data, tmp_path):
    torch.manual_seed(0)
    _, sanity = _sweep(Noisy(load_model(base)), data, tmp_path, attacks=("fgsm",))
    det = sanity[sanity["check"] == "deterministic"].iloc[0]
    assert det["status"] == "fail" and det["value"] > 0, det.to_dict()


def test_a_model_left_in_train_mode_is_evaluated_in_eval_mode(base, data, tmp_path):
    ref, _ = _sweep(WithDropout(load_model(base)).eval(), data, tmp_path / "eval", attacks=("fgsm",))
    model = WithDropout(load_model(base)).train()
    got, sanity = _sweep(model, data, tmp_path / "train", attacks=("fgsm",))
    assert model.training  # evaluated in eval mode, then handed back as it was found (train mode)
    assert _status(sanity, "deterministic") == "pass"
    cols = ["attack", "eps", "clean_acc", "robust_acc", "status"]
    pd.testing.assert_frame_equal(ref[cols].reset_index(drop=True), got[cols].reset_index(drop=True))


def test_a_model_stuck_in_train_mode_fails_the_determinism_check(base, data, tmp_path):
    torch.manual_seed(0)
    summary, sanity = _sweep(StuckInTrain(load_model(base)), data, tmp_path, attacks=("fgsm",))
    det = sanity[sanity["check"] == "deterministic"].iloc[0]
    assert det["status"] == "fail" and not math.isnan(det["value"]), det.to_dict()
    # and no number is reported as trustworthy: the cells are not `ok`
    attack_rows = summary[summary["attack"] == "fgsm"]
    assert (attack_rows["status"] != "ok").all(), attack_rows[["eps", "status", "message"]]


def test_black_box_is_compared_with_every_white_box_attack_together() -> None:
    """Square breaking what FGSM or PGD-10 missed is a weak white-box attack when AutoAttack broke the
    same samples (the demo: square beat fgsm on 20 % and pgd-linf on 5.5 % at 8/255, autoattack on 0):
    it passes. A sample no white-box attack breaks but square does is the masking sign: it fails."""
    import numpy as np
    import pandas as pd

    from robustbench_lta.engine.sanity import AttackTraits, table_checks

    traits = {"fgsm": AttackTraits("white-box", False, True, "linf"),
              "pgd-linf": AttackTraits("white-box", True, True, "linf"),
              "autoattack": AttackTraits("white-box", True, True, "linf"),
              "square": AttackTraits("black-box-score", True, True, "linf")}
    eps = 8 / 255
    broken = {"fgsm": [1, 0, 0, 0, 0], "pgd-linf": [1, 1, 0, 0, 0], "autoattack": [1, 1, 1, 1, 0],
              "square": [1, 1, 1, 0, 0]}

    def tables(square: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
        rows, summary = [], []
        for attack, flags in {**broken, "square": square}.items():
            for i, b in enumerate(flags):
                rows.append({"model": "m", "attack": attack, "eps": eps, "index": i, "broken": bool(b),
                             "label": 0, "clean_pred": 0})
            summary.append({"model": "m", "attack": attack, "eps": eps, "status": "ok", "clean_acc": 1.0,
                            "robust_acc": 1 - float(np.mean(flags))})
        return pd.DataFrame(summary), pd.DataFrame(rows)

    checks = pd.DataFrame(table_checks(*tables(broken["square"]), traits))
    row = checks[checks["check"] == "white-box-at-least-black-box"]
    assert list(row["attack"]) == ["square vs autoattack, pgd-linf"] and list(row["status"]) == ["pass"]
    masked = pd.DataFrame(table_checks(*tables([1, 1, 1, 0, 1]), traits))
    row = masked[masked["check"] == "white-box-at-least-black-box"]
    assert list(row["status"]) == ["fail"] and "no white-box attack" in row["message"].iloc[0]


def test_a_model_random_at_test_time_fails_the_determinism_check():
    from robustbench_lta.engine.sanity import model_checks

    torch.manual_seed(0)
    noisy = nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.Dropout(0.5)).train()  # dropout stays on
    x, y = torch.rand(16, 3, 2, 2), torch.randint(0, 10, (16,))
    with torch.inference_mode():
        reference = noisy(x)
    rows = {r["check"]: r for r in model_checks("m", noisy, x, y, reference)}
    assert rows["deterministic"]["status"] == "fail"
