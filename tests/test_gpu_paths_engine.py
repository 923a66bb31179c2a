"""The sweep engine's GPU paths, checked on CPU (issue #27, "The first run on a GPU must work").

Each test stands in for one thing a first GPU run would hit, with the mechanism made observable on
CPU: a module on the ``meta`` device for a module already on the GPU, ``torch.cuda.OutOfMemoryError``
raised by hand, fp16 computed by casting to half, bf16 autocast on CPU, a ``torch.compile`` that
fails like one without a C compiler, Ray's resource choice as a pure function.
"""

from __future__ import annotations

import warnings
import weakref

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from robustbench_lta.engine.api import run_sweep

EPS = [0.0, 2 / 255, 8 / 255]
KW = dict(progress=False, sanity_samples=8, attention_samples=0)
DETERMINISTIC = ["fgsm", {"name": "pgd-linf", "params": {"steps": 3, "random_start": False}}]
FLAGS = ["model", "attack", "eps", "index", "label", "clean_pred", "adv_pred", "attacked", "broken"]


def _samples(out) -> pd.DataFrame:
    df = pd.read_parquet(out / "samples.parquet")
    return df.sort_values(["attack", "eps", "index"]).reset_index(drop=True)


# ------------------------------------------------------------------------- 4: the width probe
class _DeviceStrict(nn.Module):
    """Refuses an input on another device than its weights (as a CUDA module does a CPU tensor);
    weights on ``meta``: shapes without memory, standing in for a module already on the GPU."""

    def __init__(self, classes: int = 7) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, classes, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device != self.fc.weight.device:
            raise RuntimeError(f"input on {x.device}, weights on {self.fc.weight.device}")
        return self.fc(x.flatten(1))


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return torch.rand(3, 4, 4), 0


def test_output_width_probe_runs_on_the_modules_own_device():
    from robustbench_lta.config import SweepConfig, validate
    from robustbench_lta.engine.inputs import resolve_source

    raw = {"models": [{"name": "m", "source": "module:m"}], "attacks": [{"name": "fgsm"}], "eps": [0.0],
           "eps_scale": 1.0, "n": 4}
    cfg = validate(SweepConfig, raw, "test")
    lm = _loaded(_DeviceStrict())
    x, y = torch.rand(4, 3, 4, 4), torch.zeros(4, dtype=torch.long)
    assert len(resolve_source(cfg, (x, y), [lm], None).classes) == 7
    assert len(resolve_source(cfg, _Images(), [lm], None).classes) == 7


def _loaded(module: nn.Module):
    from robustbench_lta.engine.models import LoadedModel

    # a meta module has no bytes to fingerprint: built by hand, only the width probe uses it
    return LoadedModel("m", module, "module:m", {"arch": "m", "sha256": ""})


# ------------------------------------------------------------------------- 5: out-of-memory back-off
class _Marker:
    """Lives in the frame of a call that ran out of memory: alive while anything holds that frame."""


class _OomAbove(nn.Module):
    """A linear classifier that runs out of memory (as CUDA would) on batches above ``limit``, in the
    attack (gradient) path and/or in inference (clean pass, predictions).

    Each failing call leaves a :class:`_Marker` in its frame, as a real one leaves its activations
    and graph; ``leaks`` counts later calls that ran while such a frame was still alive (the retry
    then competes with the failed call's memory).
    """

    def __init__(self, limit: int, where: tuple[str, ...] = ("attack", "inference")) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 8 * 8, 10)
        self.limit, self.where = limit, where
        self.failed: list[weakref.ref] = []
        self.leaks = 0
        self.ooms = {"attack": 0, "inference": 0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.leaks += sum(r() is not None for r in self.failed)
        phase = "attack" if torch.is_grad_enabled() else "inference"
        marker = _Marker()
        if phase in self.where and len(x) > self.limit:
            self.failed.append(weakref.ref(marker))
            self.ooms[phase] += 1
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {len(x)} images")
        return self.fc(x.flatten(1))


def _oom_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 8, 8, generator=g)
    with torch.no_grad():  # the model's own predictions as labels: every sample is attacked
        y = _OomAbove(10**9)(x).argmax(1)
    return x, y


@pytest.mark.parametrize("where", [("attack",), ("inference",), ("attack", "inference")])
def test_oom_backoff_splits_outside_the_handler_and_covers_clean_pass_and_prediction(tmp_path, where):
    x, y = _oom_data()
    kw = dict(data=(x, y), n=64, batch_size=64, device="cpu", **KW)
    run_sweep({"m": _OomAbove(10**9)}, DETERMINISTIC, EPS, out=tmp_path / "whole", **kw)
    limited = _OomAbove(20, where)  # >= the model checks' 16 samples: only units split
    summary = run_sweep({"m": limited}, DETERMINISTIC, EPS, out=tmp_path / "split", **kw)
    assert (summary["status"] == "ok").all(), summary["message"].tolist()
    assert all(limited.ooms[p] > 0 for p in where)  # the back-off was exercised on every path asked
    assert limited.leaks == 0  # every retry ran after the failed call's frames were released
    whole, split = _samples(tmp_path / "whole"), _samples(tmp_path / "split")
    pd.testing.assert_frame_equal(whole[FLAGS], split[FLAGS])
    np.testing.assert_allclose(whole["norm"], split["norm"], atol=1e-6)
    assert split["broken"].any() and not split["broken"].all()


def test_oom_halves_draw_their_own_attack_seed(tmp_path):
    from robustbench_lta.plugins import Attack, ThreatModel

    class SeedRecorder(Attack):
        """No perturbation; out of memory above 16 images; records the seed of each batch it ran."""

        name = "test-seed-recorder"
        threat_model = ThreatModel.LINF
        randomized = True

        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            self.seeds: list[tuple[int, int]] = []

        def perturb(self, model, x, y, eps):
            if len(x) > 16:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            self.seeds.append((self.seed, len(x)))
            return x.clone()

    attack = SeedRecorder()
    x, y = _oom_data()
    summary = run_sweep({"m": _OomAbove(10**9)}, [attack], [4 / 255], data=(x, y), n=64, batch_size=64,
                        device="cpu", out=tmp_path / "o", **KW)
    assert (summary["status"] == "ok").all()
    assert [n for _, n in attack.seeds] == [16, 16, 16, 16]
    assert len({s for s, _ in attack.seeds}) == 4  # four quarters, four random starts


# ------------------------------------------------------------------------- 7: AMP in attacks
class _HalfInside(nn.Module):
    """Computes in float16 (as an fp16 autocast region does): a tiny weight times a tiny gradient
    underflows there."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.half() * torch.tensor(1e-3, dtype=torch.half)
        return torch.stack([h.flatten(1).sum(1), -h.flatten(1).sum(1)], 1)


def test_fp16_input_gradients_are_loss_scaled_not_flushed_to_zero():
    from robustbench_lta.engine.runtime import EngineModel, LossScale, scale_outputs, unscale_input

    # the scaling Functions leave a float32 gradient as it is (powers of two: exact)
    lin = nn.Linear(12, 3)
    x = torch.rand(5, 12, requires_grad=True)
    (ref,) = torch.autograd.grad(lin(x).logsumexp(1).sum(), x)
    holder = LossScale()
    (out,) = scale_outputs(holder, lin(unscale_input(x, holder)))
    (got,) = torch.autograd.grad(out.logsumexp(1).sum(), x)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert float(holder.scale) != 1.0

    # through a float16 region, a tiny gradient underflows without scaling and survives with it
    def input_grad(model: nn.Module) -> torch.Tensor:
        xg = torch.rand(4, 3, 2, 2, requires_grad=True)
        (g,) = torch.autograd.grad(model(xg)[:, 0].sum() * 1e-6, xg)
        return g

    assert (input_grad(_HalfInside()) == 0).all()
    engine = EngineModel(_HalfInside(), amp_dtype=torch.float16)
    g = input_grad(engine)
    torch.testing.assert_close(g, torch.full_like(g, 1e-9), rtol=2e-3, atol=0)
    assert engine.work() == (4, 4)  # the work counters see the scaled graph as before
    with torch.no_grad():  # no gradient: no scaling nodes, same logits
        ones = torch.ones(1, 3, 2, 2)
        torch.testing.assert_close(engine(ones), _HalfInside()(ones).float())


def test_amp_auto_picks_bf16_only_where_native_and_fp16_on_a_pre_ampere_gpu(monkeypatch):
    from robustbench_lta import devices
    from robustbench_lta.engine import runtime

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # counts emulation
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 0))  # Volta
    assert runtime.amp_dtype(cuda, "auto") == torch.float16
    assert runtime.amp_dtype(cuda, "bf16") == torch.bfloat16  # asked for explicitly
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 0))  # Ampere
    assert runtime.amp_dtype(cuda, "auto") == torch.bfloat16
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda *a: True)
    monkeypatch.setattr(devices, "cpu_bf16_speedup", lambda *a: 2.0)  # measured faster here
    assert runtime.amp_dtype(cpu, "auto") == torch.bfloat16
    assert runtime.amp_dtype(cpu, "bf16") == torch.bfloat16
    assert runtime.amp_dtype(cpu, "fp16") is None and runtime.amp_dtype(cpu, "off") is None
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda *a: False)
    assert runtime.amp_dtype(cpu, "auto") is None


def test_engine_autocast_follows_the_device_of_the_batch():
    from robustbench_lta.engine.runtime import EngineModel

    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return nn.functional.linear(x.flatten(1), torch.ones(2, x[0].numel()))

    model = EngineModel(Probe(), amp_dtype=torch.bfloat16)
    assert model(torch.rand(2, 3)).dtype == torch.float32  # logits always float32
    with model.float32():
        model(torch.rand(2, 3))
    assert seen == [(True, torch.bfloat16), (False, torch.bfloat16)]


# ------------------------------------------------------------------------- 8: float32 predictions
class _NearTie(nn.Module):
    """Two classes whose weights differ by 2**-10 (relative): float32 tells them apart (class 1),
    bf16's 8 mantissa bits do not (a tie: class 0). Records whether gradient forwards ran in autocast."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)
            self.fc.weight[1] *= 1 + 2**-10
        self.autocast_in_attack: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.autocast_in_attack.append(torch.is_autocast_enabled("cpu"))
        return self.fc(x.flatten(1))


def test_predictions_are_float32_while_attacks_run_under_amp(tmp_path):
    x = torch.rand(16, 3, 4, 4)
    y = torch.ones(16, dtype=torch.long)
    model = _NearTie()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert (model(x).argmax(1) == 0).all()  # the trap: bf16 predictions are all wrong
    # sanity_samples=0: the model pass's amp-parity check runs one attack in float32 on purpose
    # (tests/test_amp_parity.py); here every attack call of the sweep's cells must be bf16
    summary = run_sweep({"m": model}, ["fgsm", "gaussian-noise"], [0.0, 1 / 255], data=(x, y), device="cpu",
                        amp="bf16", out=tmp_path / "o", **{**KW, "sanity_samples": 0})
    assert model.autocast_in_attack and all(model.autocast_in_attack)  # the attack did run in bf16
    samples = _samples(tmp_path / "o")
    assert (samples["clean_pred"] == 1).all() and (samples["adv_pred"] == 1).all()
    assert (summary["clean_acc"] == 1.0).all() and (summary["robust_acc"] == 1.0).all()


# ------------------------------------------------------------------------- 9: torch.compile
class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(4, 10))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("fails", ["at the probe", "at the first attack call"])
def test_compile_failure_falls_back_to_eager_with_one_warning(tmp_path, monkeypatch, fails):
    from robustbench_lta.engine import runtime

    compiled_with = []

    class NoCompiler(nn.Module):
        """What torch.compile returns without a C compiler: fails when first called."""

        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, x, **kw):
            if fails == "at the probe" or torch.is_grad_enabled():
                raise RuntimeError("no C compiler found\nInductor: cc not on PATH")
            return self.module(x, **kw)

    def fake_compile(module, **kw):
        compiled_with.append(kw)
        return NoCompiler(module)

    x = torch.rand(24, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # the model's own predictions as labels: every sample is attacked
        y = _TinyNet()(x).argmax(1)
    kw = dict(data=(x, y), device="cpu", batch_size=8, **KW)
    ref = run_sweep({"t": _TinyNet()}, DETERMINISTIC, EPS, out=tmp_path / "eager", **kw)
    monkeypatch.setattr(torch, "compile", fake_compile)
    # compile applies on CUDA only; here the condition is opened for the CPU
    monkeypatch.setattr(runtime, "_compile_applies", lambda device: True, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = run_sweep({"t": _TinyNet()}, DETERMINISTIC, EPS, out=tmp_path / "compiled", compile=True, **kw)
    ours = [str(w.message) for w in caught if "torch.compile" in str(w.message)]
    assert len(ours) == 1, ours
    assert "no C compiler found" in ours[0] and "Inductor" not in ours[0]  # the first line only
    assert compiled_with == [{"dynamic": True}]  # batch sizes vary: no recompile per size
    cols = [c for c in ref.columns if c != "seconds"]
    pd.testing.assert_frame_equal(ref[cols], got[cols])
    assert (ref["clean_acc"] == 1.0).all() and (ref["robust_acc"] < 1.0).any()
    pd.testing.assert_frame_equal(_samples(tmp_path / "eager"), _samples(tmp_path / "compiled"))


# ------------------------------------------------------------------------- 10: Ray GPU reservation
def test_ray_reserves_a_gpu_only_for_tasks_that_run_on_cuda():
    from robustbench_lta.engine.executors.ray_executor import _gpus_per_task

    assert _gpus_per_task("cpu", None, 4.0, True) == 0  # was 1: a CPU sweep held every GPU
    assert _gpus_per_task("cpu", 1, 4.0, True) == 0
    assert _gpus_per_task("auto", None, 4.0, True) == 1
    assert _gpus_per_task("auto", None, 4.0, False) == 1  # a CPU-only driver, GPU workers
    assert _gpus_per_task("auto", None, 0.0, False) == 0
    assert _gpus_per_task("auto", 0.5, 4.0, True) == 0.5
    assert _gpus_per_task("cuda", None, 2.0, True) == 1
    assert _gpus_per_task("cuda:1", 0.25, 2.0, True) == 0.25
