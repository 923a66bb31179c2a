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
