"""Every built-in attack and both adapters on a permuted (non-contiguous) input and a channels_last
model: each cell ``ok``, the same answers as on the contiguous copy (issue: AutoAttack/FAB called
``.view`` on gradients with the input's permuted strides and failed at small budgets)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from robustbench_lta.engine.api import run_sweep
from robustbench_lta.plugins.registry import list_attacks

ADAPTERS = [{"name": "ta:PGD", "params": {"steps": 3}}, {"name": "fb:LinfPGD", "params": {"steps": 3}}]
SMALL = {"boundary": {"steps": 20}, "square": {"n_queries": 20}, "cw-l2": {"steps": 10},
         "apgd-ce": {"steps": 5}, "pgd-linf": {"steps": 3}, "pgd-l2": {"steps": 3}, "mifgsm": {"steps": 3}}


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.f = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                     torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
                                     torch.nn.Linear(32, 10))

    def forward(self, x):
        return self.f(x)


def _builtin_names() -> list[str]:
    names = []
    for info in list_attacks():
        name = getattr(info, "name", info)
        if "attn" in str(name) or "attention" in str(name):
            continue  # attention attacks need an attention model (tested with one elsewhere)
        names.append(str(name))
    return names


@pytest.mark.parametrize("attack", _builtin_names() + [a["name"] for a in ADAPTERS])
def test_attack_on_a_permuted_input_and_channels_last_model(attack, tmp_path):
    x = torch.rand(8, 8, 8, 3).permute(0, 3, 1, 2)  # NHWC data made NCHW the usual way: not contiguous
    assert not x.is_contiguous()
    net = _Net().eval()
    with torch.inference_mode():
        y = net(x.contiguous()).argmax(1)  # every sample clean-correct: all reach the attack
    own = {"name": attack, "params": SMALL.get(attack, {})}
    spec = next((a for a in ADAPTERS if a["name"] == attack), own)
    eps = [1 / 255, 2 / 255]
    kw = dict(out=tmp_path / "a", progress=False, sanity_samples=0, attention_samples=0, channels_last=True)
    perm = run_sweep({"n": net}, [spec], eps, data=(x, y), **kw)
    kw["out"] = tmp_path / "b"
    cont = run_sweep({"n": net}, [spec], eps, data=(x.contiguous(), y), **kw)
    rows = perm[perm["attack"] != "worst-case"]
    assert (rows["status"] == "ok").all(), rows[["eps", "status", "message"]].to_string()
    cols = ["attack", "eps", "robust_acc", "status"]
    pd.testing.assert_frame_equal(perm[cols], cont[cols])
