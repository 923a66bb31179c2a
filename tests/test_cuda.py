"""CUDA paths: AMP training (bf16; fp16 with a grad scaler), channels_last, torch.compile, CPU = CUDA sweeps.

Marked ``cuda`` and skipped without a GPU (so CI, which has none, skips them all); ``make gpu-check``
runs them first on the machine with the accelerator (``pytest -m cuda``). Tiny models and data, so
the whole file takes well under a minute there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from robustbench_lta.config import TrainConfig, validate
from robustbench_lta.models.registry import create_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

N_SWEEP = 256
FGSM_EPS = [1 / 255, 4 / 255, 8 / 255]
#: Flags that may differ between two float orders (CPU vs CUDA, or two cuDNN algorithm picks): FGSM's
#: sign(gradient) flips on near-zero gradient entries, moving samples that sit on the decision boundary.
MAX_FLAG_DIFF = 0.02


def _train_cfg(out: Path, amp: str, **extra) -> TrainConfig:
    return validate(TrainConfig, {
        "model": {"name": "smallcnn_att2_concat_pc", "width": 0.25},
        "data": {"name": "cluttered-digits", "n_train": 512, "n_test": 128},
        "augment": {"flip": False, "crop_padding": 2},
        "epochs": 2, "batch_size": 64, "lr": 0.02, "seed": 0, "device": "cuda", "amp": amp,
        "channels_last": True, "out": str(out), **extra,
    })


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_runs(tmp_path: Path, amp: str) -> None:
    """The trainer on CUDA with autocast: finite loss, fp32 weights saved, a scaler only for fp16."""
    from robustbench_lta.training.checkpoint import load_model
    from robustbench_lta.training.trainer import train

    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    result = train(_train_cfg(tmp_path / amp, amp), progress=False)
    assert all(np.isfinite(r["train_loss"]) for r in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] * 1.5
    state = json.loads((tmp_path / amp / "trainer_state.json").read_text())
    if amp == "fp16":
        assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    else:
        assert state["scaler"] is None
    model = load_model(result.last_path)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_pinned_host_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The path for splits too big for the GPU: pinned host memory, non-blocking copies per batch."""
    from robustbench_lta.training import batches, trainer

    monkeypatch.setattr(batches, "DEVICE_DATA_LIMIT_BYTES", 0)
    result = trainer.train(_train_cfg(tmp_path / "pinned", "off", epochs=1), progress=False)
    assert np.isfinite(result.history[0]["train_loss"]) and np.isfinite(result.test_acc)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_amp_step_dtypes_and_scaler(dtype: torch.dtype) -> None:
    """One optimizer step by hand: autocast logits in low precision, fp32 grads, the scaler's unscale."""
    model = create_model("vgg16_att3_concat_pc", num_classes=10, width=0.125).cuda()
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    x = torch.rand(32, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32,), device="cuda")
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast("cuda", dtype=dtype):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    assert logits.dtype == dtype
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        assert scaler.get_scale() > 0
    else:
        loss.backward()
        opt.step()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters(), strict=True))


def test_channels_last_matches_nchw() -> None:
    model = create_model("vgg16_att3_concat_pc", num_classes=10, width=0.25).cuda().eval()
    x = torch.rand(16, 3, 32, 32, device="cuda")
    with torch.no_grad():
        ref = model(x)
        nhwc = model.to(memory_format=torch.channels_last)
        conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        out = nhwc(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


def test_compiled_model_matches_eager() -> None:
    model = create_model("smallcnn_att2_concat_pc", num_classes=10, width=0.25).cuda().eval()
    compiled = torch.compile(model)
    x = torch.rand(8, 3, 32, 32, device="cuda", requires_grad=True)
    ref = model(x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    out = compiled(x)
    (g_out,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------- sweeps
def _robust_flags(out: Path) -> pd.Series:
    """(eps, index) -> robust, from the samples table of a per-attack sweep (every sample, every eps)."""
    s = pd.read_parquet(out / "samples.parquet")
    robust = (s["clean_pred"] == s["label"]) & ~s["broken"].astype(bool)
    return pd.Series(robust.to_numpy(), index=pd.MultiIndex.from_arrays([s["eps"].round(8), s["index"]]))


def _sweep(ckpt: Path, attack: str, device: str, out: Path, **options) -> pd.DataFrame:
    from robustbench_lta import run_sweep

    return run_sweep({"m": str(ckpt)}, [attack], FGSM_EPS, data="cluttered-digits", n=N_SWEEP,
                     batch_size=128, device=device, seed=0, accounting="per-attack", out=out,
                     progress=False, sanity_samples=0, attention_samples=0, **options)


def _compare(a: pd.Series, b: pd.Series, what: str) -> list[tuple]:
    index = a.index.union(b.index)  # a sample clean-correct in one run only is not robust in the other
    a, b = a.reindex(index, fill_value=False), b.reindex(index, fill_value=False)
    diff = a[a != b]
    listed = [(float(e), int(i), bool(a[(e, i)])) for e, i in diff.index]
    print(f"{what}: {len(diff)} of {len(a)} robust flags differ {listed}")
    assert len(diff) <= MAX_FLAG_DIFF * len(a), f"{what}: {len(diff)} flags differ: {listed}"
    return listed


def test_fgsm_sweep_cuda_equals_cpu(trained_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """FGSM at 3 budgets on 256 images: the same robust flags on CUDA as on CPU (any difference listed)."""
    ckpt = trained_checkpoints["smallcnn_att2_concat_pc"]
    cpu = _sweep(ckpt, "fgsm", "cpu", tmp_path / "cpu")
    gpu = _sweep(ckpt, "fgsm", "cuda", tmp_path / "cuda")
    assert (cpu["status"] == "ok").all() and (gpu["status"] == "ok").all()
    assert np.allclose(cpu["clean_acc"], gpu["clean_acc"], atol=1 / N_SWEEP)
    _compare(_robust_flags(tmp_path / "cpu"), _robust_flags(tmp_path / "cuda"), "cpu vs cuda")
    np.testing.assert_allclose(cpu["robust_acc"], gpu["robust_acc"], atol=MAX_FLAG_DIFF)


def test_seeded_cuda_sweeps_repeat(trained_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """PGD with a seeded random start, twice on CUDA: the same flags (cuDNN float order aside)."""
    ckpt = trained_checkpoints["smallcnn_att2_concat_pc"]
    _sweep(ckpt, "pgd-linf", "cuda", tmp_path / "a")
    _sweep(ckpt, "pgd-linf", "cuda", tmp_path / "b")
    listed = _compare(_robust_flags(tmp_path / "a"), _robust_flags(tmp_path / "b"), "cuda repeat")
    assert len(listed) <= 2


def test_compiled_bf16_sweep_runs(trained_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """The engine's CUDA options (torch.compile, bf16 autocast) give a finished, sane FGSM sweep."""
    ckpt = trained_checkpoints["smallcnn_att2_concat_pc"]
    ref = _sweep(ckpt, "fgsm", "cuda", tmp_path / "ref")
    opt = _sweep(ckpt, "fgsm", "cuda", tmp_path / "opt", compile=True, amp="bf16")
    assert (opt["status"] == "ok").all()
    np.testing.assert_allclose(opt["robust_acc"], ref["robust_acc"], atol=0.05)
