"""Regression tests for issue 24 ("Hardening v2"), the "silently wrong (exit 0)" items.

Each test names the issue item it guards; every one failed on 58a4994 (a cell reported ``ok`` over
replaced images or a hooked model, a dataset read 41 times, a page dropped without a word, a
boolean read as a budget, a flag dropped, NaN blamed on the attack and on dropout) and passes now.
The CLI runs in-process through ``robustbench_lta.cli.main`` (the real error wrapper) for speed.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from test_hardening import _attention_results, run_cli  # the first round's CLI runner and sweep
from torch import nn

from robustbench_lta.errors import UserError
from robustbench_lta.plugins import Attack

# an untrained registry model on the embedded digits: enough to run a sweep in a second
TINY = ["--data", "cluttered-digits", "--n", "8", "--quiet", "--set", "sanity_samples=0",
        "--set", "attention_samples=0"]


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip() and "warning" not in ln.lower()
             and not ln.startswith("  ") and not ln.startswith("note:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# ------------------------------------------------------------------ a model whose answers are known
N, K = 16, 4


class Quadrants(nn.Module):
    """Class c lights up quadrant c; the logits are the quadrants' means (100 % clean accuracy, and
    8/255 cannot move a 0.4 margin). Submodules, so a plugin has something to hook."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flat = nn.Flatten()
        self.head = nn.Linear(K, K, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(K))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flat(self.pool(x.mean(1, keepdim=True))))


@pytest.fixture(scope="module")
def quad_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(N) % K
    x = 0.3 + 0.1 * torch.rand(N, 3, 8, 8, generator=gen)
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, 2)
        x[i, :, r * 4:(r + 1) * 4, col * 4:(col + 1) * 4] += 0.4
    return x.clamp(0, 1), y


def _sweep(attacks: list[Any], data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path,
           model: nn.Module | None = None) -> pd.DataFrame:
    from robustbench_lta import run_sweep

    summary = run_sweep({"m": model or Quadrants()}, attacks, [0.0, 8 / 255], data=data, n=N, batch_size=8,
                        out=tmp_path / f"res{len(list(tmp_path.iterdir()))}", sanity_samples=0,
                        attention_samples=0, progress=False)
    return summary[summary["attack"] != "worst-case"].set_index(["attack", "eps"])


# ------------------------------------------------------------------------------ item 1: input changed
class ZeroInput(Attack):
    """Zeroes its input in place and returns a copy: measured against the zeroed x, the norm is 0."""

    name = "zero-input-test"

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        x.zero_()
        return x.clone()


def test_item1_an_attack_that_writes_into_its_input_is_invalid(quad_data, tmp_path):
    rows = _sweep([ZeroInput(), "fgsm"], quad_data, tmp_path)
    bad = rows.loc[("zero-input-test", 8 / 255)]
    assert bad["status"] == "invalid", bad.to_dict()  # was: ok, norm 0.0, robust accuracy 25 %
    assert "changed its input images in place" in bad["message"] and "(8 of 8 samples)" in bad["message"]
    assert rows.loc[("fgsm", 8 / 255), "status"] == "ok"
    assert rows.loc[("fgsm", 8 / 255), "robust_acc"] == 1.0


# ------------------------------------------------------------------------------ item 2: model state
def _roll(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
    return out.roll(1, dims=1)  # every prediction moves to the next class: 100 % -> 0 %


def _leave_forward_hook(model: nn.Module) -> None:
    model.inner.head.register_forward_hook(_roll)


def _leave_forward_pre_hook(model: nn.Module) -> None:
    model.inner.pool.register_forward_pre_hook(lambda m, args: (args[0].flip(-1),))


def _leave_global_forward_hook(model: nn.Module) -> None:
    torch.nn.modules.module.register_module_forward_hook(
        lambda m, a, out: out.roll(1, dims=1) if isinstance(m, Quadrants) else out)


def _leave_full_backward_hook(model: nn.Module) -> None:
    # gradients through the head zeroed: FGSM's sign(0) leaves every image where it was
    model.inner.head.register_full_backward_hook(lambda m, gin, gout: (torch.zeros_like(gin[0]),))


def _leave_parametrization(model: nn.Module) -> None:
    from torch.nn.utils import parametrize

    class Shift(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w.roll(1, dims=0)

    parametrize.register_parametrization(model.inner.head, "weight", Shift())


def _leave_forward_override(model: nn.Module) -> None:
    inner = model.inner
    inner.forward = lambda x: Quadrants.forward(inner, x).roll(1, dims=1)


class LeavesSomething(Attack):
    name = "leaves-something-test"
    action: Any = None

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        if not getattr(self, "done", False):
            type(self).done = True
            type(self).action(model)
        return x.clone()


@pytest.mark.parametrize("action", [_leave_forward_hook, _leave_forward_pre_hook,
                                    _leave_global_forward_hook, _leave_full_backward_hook,
                                    _leave_parametrization, _leave_forward_override],
                         ids=lambda f: f.__name__[len("_leave_"):])
def test_item2_what_an_attack_leaves_on_the_model_is_invalid_and_undone(action, quad_data, tmp_path):
    import torch.nn.modules.module as module_mod

    baseline = _sweep(["fgsm"], quad_data, tmp_path)
    hooks_before = len(module_mod._global_forward_hooks)
    attack = type("Leaves", (LeavesSomething,), {"action": staticmethod(action), "done": False})()
    model = Quadrants()
    rows = _sweep([attack, "fgsm"], quad_data, tmp_path, model)
    try:
        own = rows.loc[("leaves-something-test", 8 / 255)]
        assert own["status"] == "invalid", own.to_dict()  # was: ok
        assert "the attack changed the model" in own["message"] and "restored" in own["message"]
        after = rows.loc["fgsm"]  # the next cell of the same model: as if the plugin had not run
        assert (after["status"] == "ok").all(), after["message"].tolist()
        for col in ("clean_acc", "robust_acc"):
            assert after[col].tolist() == baseline.loc["fgsm", col].tolist(), (col, after, baseline)
        assert len(module_mod._global_forward_hooks) == hooks_before
        assert type(model.head) is nn.Linear and not model.head._forward_hooks
    finally:
        module_mod._global_forward_hooks.clear()  # a failing run must not poison the other tests


def test_item2_the_state_guard_is_quiet_on_an_untouched_model():
    from robustbench_lta.engine.models import StateGuard

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    model.register_forward_hook(lambda m, a, o: o)  # the user's own hook is part of the model
    guard = StateGuard(model)
    with torch.inference_mode():
        model(torch.rand(2, 3, 8, 8))
    assert guard.changed() == []
    handle = model[0].register_forward_pre_hook(lambda m, a: None)
    assert guard.changed() == ["a forward pre hook on '0'"]
    guard.restore()
    assert guard.changed() == [] and not model[0]._forward_pre_hooks
    handle.remove()  # removing an already-undone hook is harmless
    assert len(model._forward_hooks) == 1


# ------------------------------------------------------------------------------ item 3: link loops
def _image_folder(root: Path, per_class: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / str(c) / f"{i}.png")
    return root


@pytest.mark.parametrize("link, target, needle", [
    ("3/again", "../3", "symbolic link loop"),
    ("3/extra", "../4", "two links to one folder"),
    ("3/dup.png", "../2/0.png", "same file as"),
])
def test_item3_imagefolder_refuses_link_loops_and_duplicate_files(link, target, needle, tmp_path):
    root = _image_folder(tmp_path / "imgs")
    os.symlink(target, root / link)
    out = tmp_path / "res"
    code, _, err = run_cli("sweep", "--model", "smallcnn", "--attack", "fgsm", "--eps", "0,8",
                           "--out", str(out), *TINY, "--data", f"imagefolder:{root}", "--n", "1000")
    line = one_error_line(err)  # was: exit 0 with class 3 read 41 times
    assert code == 2 and line.startswith("error:") and needle in line and str(root / link) in line, err
    assert not out.exists()


def test_item3_a_linked_class_folder_still_loads(tmp_path):
    from robustbench_lta.data.imagefolder import find_images

    root = _image_folder(tmp_path / "imgs")
    elsewhere = _image_folder(tmp_path / "other", per_class=1) / "0"
    os.symlink(elsewhere, root / "5" / "more")  # a link to images found nowhere else: fine
    _classes, files, labels = find_images(root)
    assert len(files) == 21 and int((labels == 5).sum()) == 3


# ------------------------------------------------------------------------------ item 4: attention keys
@pytest.mark.parametrize("edit", ["renamed", "extra"])
def test_item4_an_attention_file_with_unexpected_keys_is_refused(edit, tmp_path):
    res, npz = _attention_results(tmp_path)
    arrays = dict(np.load(npz))
    if edit == "renamed":
        arrays = {f"old_{k}": v for k, v in arrays.items()}
    else:
        arrays["bogus"] = np.ones(2)
    np.savez(npz, **arrays)
    pdf = tmp_path / "rep" / "r.pdf"
    code, _, err = run_cli("report", str(res), "--out", str(pdf))
    line = one_error_line(err)  # was: exit 0, the attention page and its PNG dropped without a word
    assert code == 2 and str(npz) in line and "unexpected keys" in line, err
    assert ("old_images" if edit == "renamed" else "bogus") in line
    assert not pdf.exists()


def test_item4_the_report_api_names_the_unexpected_keys_in_its_warning(tmp_path):
    from robustbench_lta.reporting.pdf import build_report

    res, npz = _attention_results(tmp_path)
    np.savez(npz, **{f"old_{k}": v for k, v in np.load(npz).items()})
    result = build_report([res], tmp_path / "r.pdf")  # the API's convention: a warning, and the PDF
    assert any(str(npz) in w and "unexpected keys" in w and "old_images" in w for w in result.warnings), \
        result.warnings


# ------------------------------------------------------------------------------ item 5: boolean eps
@pytest.mark.parametrize("where", ["sweep", "attack"])
def test_item5_boolean_eps_are_refused(where, tmp_path):
    cfg = tmp_path / "sweep.yaml"
    attack = "{name: fgsm, eps: [true, false]}" if where == "attack" else "{name: fgsm}"
    eps = "[true, false]" if where == "sweep" else "[0, 8]"
    cfg.write_text(f"models: [{{source: smallcnn}}]\ndata: {{name: cluttered-digits}}\nn: 8\n"
                   f"attacks: [{attack}]\neps: {eps}\nsanity_samples: 0\nattention_samples: 0\n")
    out = tmp_path / "res"
    code, _, err = run_cli("sweep", str(cfg), "--out", str(out), "--quiet")
    line = one_error_line(err)  # was: exit 0 with budgets 1/255 and 0
    assert code == 2 and line.startswith("error:") and "not true" in line, err
    assert ("attacks.0.eps" if where == "attack" else "'eps'") in line
    assert not out.exists()


def test_item5_the_python_api_refuses_boolean_eps_too(quad_data):
    from robustbench_lta import run_sweep

    with pytest.raises(UserError, match="eps values must be numbers"):
        run_sweep({"m": Quadrants()}, ["fgsm"], [True], data=quad_data, n=N, progress=False)


# ------------------------------------------------------------------------------ item 6: --model + --set
def test_item6_model_flag_and_set_models_together_are_refused(tmp_path):
    out = tmp_path / "res"
    code, _, err = run_cli("sweep", "--model", "smallcnn", "--attack", "fgsm", "--eps", "0,8",
                           "--out", str(out), *TINY, "--set", "models=[{source: smallcnn_att2_concat_pc}]")
    line = one_error_line(err)  # was: exit 0, --model smallcnn silently dropped
    assert code == 2 and "--model" in line and "--set models" in line, err
    assert not out.exists()


def test_item6_set_inside_the_flag_models_still_works(tmp_path):
    code, _, err = run_cli("sweep", "--model", "smallcnn", "--attack", "fgsm", "--eps", "0,8",
                           "--out", str(tmp_path / "res"), *TINY, "--set", "seed=1")
    assert code == 0, err


# ------------------------------------------------------------------------------ item 8: NaN weights
NAN_MODEL = '''
import torch
from torch import nn
from robustbench_lta.models.registry import register_model


@register_model
def nan_weight_test(num_classes=10, width=1.0, **kw):
    model = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(3 * 16, num_classes))
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    return model
'''


def test_item8_a_model_with_a_nan_weight_is_refused_once(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "nan_model.py").write_text(textwrap.dedent(NAN_MODEL))
    out = tmp_path / "res"
    code, _, err = run_cli("sweep", "--model", "nan_weight_test", "--attack", "fgsm", "--eps", "0,8",
                           "--plugins", str(plugins), "--out", str(out), *TINY)
    line = one_error_line(err)  # was: exit 3, every cell "the attack changed the model"
    assert code == 2 and "NaN" in line and "'2.weight'" in line and "not finite" in line, err
    assert not out.exists()


def test_item8_the_python_api_refuses_it_too(quad_data):
    from robustbench_lta import run_sweep

    model = Quadrants()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN or infinite weights"):
        run_sweep({"m": model}, ["fgsm"], [0.0], data=quad_data, n=N, progress=False)


def test_item8_the_weights_guard_compares_nan_as_equal():
    from robustbench_lta.engine.models import WeightsGuard

    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    guard = WeightsGuard(model)
    assert guard.changed() == []  # was: ['weight'] (NaN != NaN)
    with torch.no_grad():
        model.bias.add_(1)
    assert guard.changed() == ["bias"]


def test_item8_nan_outputs_are_not_blamed_on_dropout():
    from robustbench_lta.engine.sanity import model_checks

    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 4))
    with torch.no_grad():
        model[1].bias[0] = float("nan")
    with torch.inference_mode():
        reference = model(x)
    rows = {r["check"]: r for r in model_checks("m", model, x, y, reference)}
    assert rows["deterministic"]["status"] == "pass"  # was: fail, "dropout in train mode"
    assert rows["finite-logits"]["status"] == "fail"
