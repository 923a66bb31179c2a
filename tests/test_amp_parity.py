"""A sweep under autocast checks its attacks against float32 on the probe samples (amp-parity row)."""

from __future__ import annotations

import pandas as pd

from robustbench_lta import run_sweep
from robustbench_lta.engine.sanity import PARITY_TOLERANCE, amp_parity_row


def test_amp_parity_row_warns_only_when_reduced_precision_attacks_are_weaker() -> None:
    assert amp_parity_row("m", 0.30, 0.30, 16, "bfloat16", 8 / 255)["status"] == "pass"
    assert amp_parity_row("m", 0.25, 0.30, 16, "bfloat16", 8 / 255)["status"] == "pass"  # stronger is fine
    weak = amp_parity_row("m", 0.30 + PARITY_TOLERANCE + 0.01, 0.30, 16, "bfloat16", 8 / 255)
    assert weak["status"] == "warn" and "amp: off" in weak["message"]


def test_a_bf16_sweep_records_parity_and_a_float32_sweep_does_not(trained_checkpoints, tmp_path) -> None:
    def sanity(amp: str) -> pd.DataFrame:
        out = tmp_path / amp
        run_sweep({"m": str(trained_checkpoints["smallcnn"])}, ["fgsm"], [0, 8 / 255],
                  data="cluttered-digits", n=64, out=out, progress=False, sanity_samples=16,
                  attention_samples=0, amp=amp)
        return pd.read_parquet(out / "sanity.parquet")

    bf16 = sanity("bf16")
    row = bf16[bf16["check"] == "amp-parity"]
    assert len(row) == 1 and row["status"].iloc[0] in ("pass", "warn")
    assert "bfloat16 autocast" in row["message"].iloc[0] and "float32" in row["message"].iloc[0]
    assert sanity("off")[lambda s: s["check"] == "amp-parity"].empty
    # the model pass is cached per amp setting: a bf16 re-run into a float32 folder adds the row
    run_sweep({"m": str(trained_checkpoints["smallcnn"])}, ["fgsm"], [0, 8 / 255], data="cluttered-digits",
              n=64, out=tmp_path / "off", progress=False, sanity_samples=16, attention_samples=0, amp="bf16")
    again = pd.read_parquet(tmp_path / "off" / "sanity.parquet")
    assert (again["check"] == "amp-parity").sum() == 1


def test_amp_applies_to_bounded_gradient_attacks_only(tmp_path, monkeypatch) -> None:
    """Under amp: bf16 a PGD attack's forwards run under autocast; Square's queries and DeepFool's steps
    (margins and step sizes bf16 rounds away: benchmarks/bench_amp.py) run in float32. The cells of
    an amp sweep are keyed apart from float32 ones only where the attack ran under autocast."""
    import torch

    from robustbench_lta.models.registry import create_model
    from robustbench_lta.plugins import get_attack_class

    seen: dict[str, set[bool]] = {}
    inside: list[str] = []

    def recording(name: str, method):  # noqa: ANN001, ANN202 - wraps an attack method
        def wrapped(self, *args, **kwargs):  # noqa: ANN001, ANN202
            inside.append(name)
            try:
                return method(self, *args, **kwargs)
            finally:
                inside.pop()
        return wrapped

    class Recorder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = create_model("smallcnn", num_classes=10, width=0.25)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if inside:  # a forward the attack itself asked for
                seen.setdefault(inside[-1], set()).add(torch.is_autocast_enabled("cpu"))
            return self.net(x)

    model = Recorder().eval()
    from robustbench_lta.data.registry import load_dataset

    x, _ = load_dataset("cluttered-digits", split="test", n=16).tensors()
    with torch.no_grad():
        own = model(x).argmax(1)  # labelled with its own predictions: every sample is attacked
    for attack in ("pgd-linf", "square", "deepfool"):
        cls = get_attack_class(attack)
        monkeypatch.setattr(cls, "perturb", recording(attack, cls.perturb))
        spec = {"name": "square", "params": {"n_queries": 5}} if attack == "square" else attack
        run_sweep({"m": model}, [spec], [8 / 255], data=(x, own), out=tmp_path / attack,
                  progress=False, sanity_samples=0, attention_samples=0, amp="bf16")
    assert seen["pgd-linf"] == {True}
    assert seen["square"] == {False} and seen["deepfool"] == {False}

    from robustbench_lta.config import SweepConfig, validate
    from robustbench_lta.engine.plan import build_attack_plans, cell_key

    cfg = validate(SweepConfig, {"models": [{"source": "smallcnn"}],
                                 "attacks": [{"name": "pgd-linf"}, {"name": "square"}], "eps": [8]}, "test")
    pgd, square = build_attack_plans(cfg)
    assert cell_key({}, {}, pgd, 0, "worst-case", amp="bf16") != cell_key({}, {}, pgd, 0, "worst-case")
    assert cell_key({}, {}, square, 0, "worst-case", amp="bf16") == cell_key({}, {}, square, 0, "worst-case")


def test_amp_auto_is_keyed_by_the_precision_it_resolves_to(trained_checkpoints, tmp_path,
                                                            monkeypatch) -> None:
    """A sweep with amp: auto resumed on another processor must not count float32 and bf16 units as one
    cell: its cells are keyed by what auto resolves to, so they match amp: off where bf16 is not faster
    and amp: bf16 where it is."""
    from robustbench_lta import devices

    def counts(amp: str, out: str) -> dict:
        summary = run_sweep({"m": str(trained_checkpoints["smallcnn"])}, ["pgd-linf:steps=2"], [8 / 255],
                            data="cluttered-digits", n=32, out=tmp_path / out, progress=False,
                            sanity_samples=0, attention_samples=0, amp=amp)
        return summary.attrs["counts"]

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda *a: False)
    assert counts("off", "a")["units_run"] == 1
    assert counts("auto", "a") == {**counts("off", "a"), "units_run": 0, "units_reused": 1}  # float32 here
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda *a: True)
    monkeypatch.setattr(devices, "cpu_bf16_speedup", lambda *a: 2.0)
    assert counts("auto", "a")["units_run"] == 1  # now bf16: the float32 units are not reused
    assert counts("bf16", "a")["units_run"] == 0  # and an explicit bf16 sweep finds them
