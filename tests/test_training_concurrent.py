"""Several training runs at once (training/concurrent.py): what the demo trains its two models with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustbench_lta.config import TrainConfig, validate
from robustbench_lta.errors import UserError
from robustbench_lta.training.concurrent import thread_shares, train_concurrently
from robustbench_lta.training.trainer import train


def _config(out: Path, model: str = "vgg16", **extra) -> TrainConfig:
    return validate(TrainConfig, {
        "model": {"name": model, "width": 0.0625},
        "data": {"name": "cluttered-digits", "n_train": 300, "n_test": 100},
        "augment": {"flip": False, "crop_padding": 2}, "epochs": 2, "batch_size": 50, "lr": 0.05,
        "seed": 0, "device": "cpu", "out": str(out), **extra})


def test_thread_shares_split_evenly_and_give_everyone_one() -> None:
    assert thread_shares(2, 2) == [1, 1]
    assert thread_shares(5, 2) == [3, 2]
    assert thread_shares(1, 3) == [1, 1, 1]


def test_runs_side_by_side_match_the_same_runs_alone(tmp_path: Path) -> None:
    configs = [_config(tmp_path / "a"), _config(tmp_path / "b", seed=1)]
    results = train_concurrently(configs, threads=2, progress=False)
    assert [r.out_dir.resolve() for r in results] == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]
    for r in results:
        card = json.loads((r.out_dir / "best.json").read_text())
        assert card["threads"] == 1  # each run got its share, not every core
        assert len(r.history) == 2 and 0 <= r.test_acc <= 1
    # a run in its own process is the run alone with the same threads: same weights, same figures
    alone = train(_config(tmp_path / "alone", threads=1), progress=False)
    assert alone.history[-1]["train_loss"] == results[0].history[-1]["train_loss"]
    assert alone.test_acc == results[0].test_acc


def test_a_failing_run_raises_its_own_error_after_the_other_finishes(tmp_path: Path) -> None:
    good = _config(tmp_path / "good")
    vgg17 = good.model.model_copy(update={"name": "vgg17"})
    bad = _config(tmp_path / "bad").model_copy(update={"model": vgg17})
    with pytest.raises(UserError, match="vgg17"):
        train_concurrently([good, bad], threads=2, progress=False)
    assert (tmp_path / "good" / "best.json").is_file()  # the other run was not cut off


def test_two_runs_into_one_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="same out folder"):
        train_concurrently([_config(tmp_path / "x"), _config(tmp_path / "x", seed=1)], threads=2)


def test_the_demo_sweeps_the_baseline_while_the_attention_model_trains(tmp_path: Path) -> None:
    """run_demo on 2 threads at a tiny size: the baseline's cells, swept in its training process,
    are reused by the full sweep, which runs only the attention model's."""
    from robustbench_lta.demo import SWEEP_CONFIG, TRAIN_CONFIGS, run_demo

    runs = {name: tmp_path / "runs" / name for name in ("vgg16", "att3")}
    for path, model, run in zip(TRAIN_CONFIGS, ("vgg16", "vgg16_att3_concat_pc"), runs.values(), strict=True):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(
            f"model: {{name: {model}, width: 0.0625}}\n"
            "data: {name: cluttered-digits, n_train: 200, n_test: 50}\n"
            f"epochs: 1\nbatch_size: 50\nlr: 0.05\nseed: 0\ndevice: cpu\nout: {run}\n")
    (tmp_path / SWEEP_CONFIG).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / SWEEP_CONFIG).write_text(
        f"models:\n  - {{name: vgg16, source: {runs['vgg16']}}}\n"
        f"  - {{name: vgg16_att3_concat_pc, source: {runs['att3']}}}\n"
        f"attacks: [{{name: fgsm}}]\neps: [0, 8]\neps_scale: 255\nn: 40\nout: {tmp_path / 'results'}\n")
    res = run_demo(tmp_path, threads=2, quick=True)
    counts = res.summary.attrs["counts"]
    # quick: FGSM and PGD on both models; the baseline's two cells were already in the folder
    assert counts["cells"] == 4 and counts["units_reused"] == 2 and counts["units_run"] == 2
    assert [t.config.name for t in res.trained] == ["demo_vgg16.yaml", "demo_vgg16_att3_concat_pc.yaml"]
    assert res.pdf.is_file() and set(res.summary["model"]) == {"vgg16", "vgg16_att3_concat_pc"}


STOPPABLE_SCRIPT = """
import signal, sys
from robustbench_lta.config import TrainConfig, validate
from robustbench_lta.training.concurrent import train_concurrently

def cfg(out, seed):
    return validate(TrainConfig, {"model": {"name": "vgg16", "width": 0.0625}, "epochs": 50, "batch_size": 50,
        "data": {"name": "cluttered-digits", "n_train": 2000, "n_test": 50}, "lr": 0.05, "seed": seed,
        "device": "cpu", "out": out})

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # as benchmarks/study.py does
    root = sys.argv[1]
    try:
        train_concurrently([cfg(f"{root}/{n}", s) for s, n in enumerate("abc")], 2, progress=False, jobs=2)
    except KeyboardInterrupt:
        sys.exit(130)
"""


def test_sigterm_stops_the_running_runs_resumably_and_the_queued_one_never_starts(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "stoppable.py"
    script.write_text(STOPPABLE_SCRIPT)
    # started the way a background job is: SIGINT ignored, which spawned children would inherit
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 120
    while not all((tmp_path / n / "history.csv").is_file() for n in "ab") and time.monotonic() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.count("interrupted in epoch") == 2 and not (tmp_path / "c").exists()
    for n in "ab":  # each stopped run resumes from its last finished epoch
        assert all((tmp_path / n / f).is_file() for f in ("last.safetensors", "trainer_state.json"))
