"""Regression tests for issue 24 ("Hardening v2"): each problem is one ``error:`` line and exit 2.

Every test here failed on 58a4994 (exit 0 with wrong numbers, exit 1 ``internal error``, a file
moved or left behind, or the process killed for memory) and passes now. The CLI runs in-process
through ``robustbench_lta.cli.main`` (the real error wrapper), as in tests/test_hardening.py.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tracemalloc
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_hardening import run_cli  # the in-process CLI runner the first round wrote
from test_reporting import BASE, make_results  # the synthetic results folder (no model needed)

from robustbench_lta.errors import UserError

TINY = ["--data", "cluttered-digits", "--n", "8", "--quiet", "--attack", "fgsm", "--eps", "0,8",
        "--set", "sanity_samples=0", "--set", "attention_samples=0"]


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip() and "warning" not in ln.lower()
             and not ln.startswith(("  ", "note:"))]  # warnings, the source line they quote, notes
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def user_error(code: int, stderr: str, *needles: str) -> str:
    line = one_error_line(stderr)
    assert code == 2 and line.startswith("error:"), (code, stderr)
    for needle in needles:
        assert needle in line, (needle, line)
    return line


# ------------------------------------------------------------------------------ tampered results folder
@pytest.fixture
def results(tmp_path: Path) -> Path:
    return make_results(tmp_path / "res", models=(BASE,))


def _edit(folder: Path, name: str, edit) -> None:
    path = folder / f"{name}.parquet"
    edit(pd.read_parquet(path)).to_parquet(path)


def test_robust_accuracy_above_clean_is_refused(results, tmp_path):
    def raise_robust(s: pd.DataFrame) -> pd.DataFrame:
        s.loc[s.index[3], "robust_acc"] = min(1.0, s.loc[s.index[3], "clean_acc"] + 0.1)
        return s

    _edit(results, "summary", raise_robust)
    code, _, err = run_cli("report", str(results), "--out", str(tmp_path / "r.pdf"))
    user_error(code, err, "summary.parquet", "robust_acc", "above clean_acc", "re-run the sweep")
    assert not (tmp_path / "r.pdf").exists()


def test_labels_outside_the_classes_are_refused(results, tmp_path):
    def relabel(s: pd.DataFrame) -> pd.DataFrame:
        s.loc[s.index[5], "label"] = 12  # the manifest names 10 classes
        return s

    _edit(results, "samples", relabel)
    code, _, err = run_cli("report", str(results), "--out", str(tmp_path / "r.pdf"))
    user_error(code, err, "samples.parquet", "label 12", "10 classes")


def test_two_rows_for_one_sample_and_budget_are_refused(results, tmp_path):
    _edit(results, "samples", lambda s: pd.concat([s, s.iloc[[7]]], ignore_index=True))
    code, _, err = run_cli("report", str(results), "--out", str(tmp_path / "r.pdf"))
    user_error(code, err, "samples.parquet", "one per sample and budget")


@pytest.mark.parametrize("table, column", [("samples", "label"), ("samples", "broken"),
                                           ("summary", "seconds")])
def test_a_table_without_a_column_the_report_needs_is_refused(results, tmp_path, table, column):
    _edit(results, table, lambda s: s.drop(columns=[column]))
    code, _, err = run_cli("report", str(results), "--out", str(tmp_path / "r.pdf"))
    user_error(code, err, f"{table}.parquet", f"lacks columns ['{column}']")


# ------------------------------------------------------------------------------ model cards
def test_an_unknown_model_kwargs_key_in_a_card_names_the_key(tmp_path):
    from robustbench_lta.models.registry import create_model
    from robustbench_lta.training.checkpoint import save_checkpoint

    weights = save_checkpoint(create_model("smallcnn", width=0.25), tmp_path / "m", {})
    card_path = weights.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["model"]["kwargs"]["bogus"] = 3
    card_path.write_text(json.dumps(card))
    code, _, err = run_cli("sweep", "--model", str(weights), "--out", str(tmp_path / "r"), *TINY)
    user_error(code, err, "'bogus'", "model.kwargs", str(weights))


# ------------------------------------------------------------------------------ disk full while training
def test_disk_full_while_training_is_one_line_and_keeps_the_checkpoints(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    from robustbench_lta.training.checkpoint import load_model

    real_save, calls = safetensors.torch.save_file, []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) > 3:  # epoch 1 wrote best, last and the trainer state; epoch 2 hits a full disk
            # what safetensors (Rust) raises on ENOSPC
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    cfg = tmp_path / "train.yaml"
    cfg.write_text("model: {name: smallcnn, width: 0.25}\n"
                   "data: {name: cluttered-digits, n_train: 48, n_test: 16}\n"
                   "augment: {flip: false, crop_padding: 0}\n"
                   "epochs: 2\nbatch_size: 32\nseed: 0\namp: 'off'\n")
    run = tmp_path / "run"
    code, _, err = run_cli("train", str(cfg), "--out", str(run))
    err = err.rsplit("\r", 1)[-1]  # train has no --quiet: drop its progress bars
    err = "\n".join(ln for ln in err.splitlines() if not ln.lstrip().startswith("epoch "))
    user_error(code, err, "no space left", ".safetensors", str(run))
    assert len(calls) == 4
    for name in ("best", "last"):  # the epoch-1 pairs are whole and still match their cards
        assert isinstance(load_model(run / f"{name}.safetensors"), torch.nn.Module)
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------ report output folder
def test_a_file_named_like_the_reports_files_folder_is_never_moved(results, tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "r_files").write_text("mine")
    for _ in range(2):  # the first run used to hide the file and exit 0; later runs failed
        code, _, err = run_cli("report", str(results), "--out", str(out / "r.pdf"))
        user_error(code, err, str(out / "r_files"), "in the way")
        assert sorted(p.name for p in out.iterdir()) == ["r_files"]  # no .tmp, nothing moved
        assert (out / "r_files").read_text() == "mine"


def test_a_folder_of_other_files_named_like_the_reports_files_is_never_replaced(results, tmp_path):
    out = tmp_path / "rep"
    (out / "r_files").mkdir(parents=True)
    (out / "r_files" / "notes.txt").write_text("mine")
    code, _, err = run_cli("report", str(results), "--out", str(out / "r.pdf"))
    user_error(code, err, "did not write")
    assert sorted(p.name for p in out.iterdir()) == ["r_files"]
    assert (out / "r_files" / "notes.txt").read_text() == "mine"


def test_a_report_replaces_its_own_files_and_follows_the_umask(results, tmp_path):
    out = tmp_path / "rep"
    old = os.umask(0o022)
    try:
        for _ in range(2):  # the second run replaces what the first wrote, and leaves no temporary
            code, _, err = run_cli("report", str(results), "--out", str(out / "r.pdf"))
            assert code == 0, err
            assert sorted(p.name for p in out.iterdir()) == ["r.pdf", "r_files"]
    finally:
        os.umask(old)
    assert stat.S_IMODE((out / "r.pdf").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "r_files").stat().st_mode) == 0o755
    assert (out / "r_files" / "verdict.json").is_file()


# ------------------------------------------------------------------------------ data sized by labels / n
def _npz(path: Path, top_label: int) -> Path:
    x = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    np.savez(path, x=x, y=np.array([0, 1, 2, top_label], dtype=np.int64))
    return path


@pytest.mark.parametrize("top", [2**40, 10**7])
def test_npz_labels_are_checked_before_anything_is_sized_by_them(tmp_path, top):
    from robustbench_lta.data.registry import load_dataset

    path = _npz(tmp_path / "d.npz", top)
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=f"label {top} would mean"):
            load_dataset(f"npz:{path}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20  # 10**7 class names took 1.4 GB before the error; 2**40 never finished


def test_npz_huge_label_on_the_command_line(tmp_path):
    path = _npz(tmp_path / "d.npz", 2**40)
    code, _, err = run_cli("sweep", "--model", "smallcnn", "--data", f"npz:{path}", "--n", "4", "--quiet",
                           "--attack", "fgsm", "--eps", "0,8", "--out", str(tmp_path / "r"))
    user_error(code, err, str(path), f"label {2**40}", "classes")


def test_an_npz_with_a_classes_array_still_loads(tmp_path):
    from robustbench_lta.data.registry import load_dataset

    path = tmp_path / "ok.npz"
    np.savez(path, x=np.zeros((3, 8, 8, 3), np.uint8), y=np.array([0, 2, 1]),
             classes=np.array(["a", "b", "c"]))
    assert load_dataset(f"npz:{path}").classes == ["a", "b", "c"]


def test_cluttered_digits_n_beyond_memory_is_refused_at_once(tmp_path):
    from robustbench_lta.data.registry import load_dataset

    with pytest.raises(UserError, match="memory"):
        load_dataset("cluttered-digits", n=99_999_999)
    code, _, err = run_cli("sweep", "--model", "smallcnn", "--out", str(tmp_path / "r"), *TINY[:2],
                           "--n", "99999999", "--quiet", "--attack", "fgsm")
    user_error(code, err, "cluttered-digits", "99999999", "memory", "--n")


# ------------------------------------------------------------------------------ YAML alias bomb
def _alias_bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines)


@pytest.mark.parametrize("levels", [6, 9])  # 9**6 values (seconds before) and 9**9 (70 s, MemoryError)
def test_a_yaml_alias_bomb_in_params_is_refused_before_expansion(tmp_path, levels):
    bomb = _alias_bomb(levels).replace("\n", "\n        ")
    cfg = tmp_path / "bomb.yaml"
    # as a known parameter's value: its type error used to write the whole expansion out
    cfg.write_text("models: [{source: smallcnn}]\ndata: {name: cluttered-digits}\nn: 8\neps: [0, 8]\n"
                   f"attacks:\n  - name: pgd-linf\n    params:\n      steps:\n        {bomb}\n")
    assert cfg.stat().st_size < 1300
    code, _, err = run_cli("sweep", str(cfg), "--out", str(tmp_path / "r"), "--quiet")
    user_error(code, err, str(cfg), "aliases", "100000")
    assert not (tmp_path / "r").exists()


def test_ordinary_aliases_still_load():
    from robustbench_lta.config import safe_load_unique

    assert safe_load_unique("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}


# ------------------------------------------------------------------------------ hf-hub: local folder
class _Tiny(torch.nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.head = torch.nn.Linear(3 * 32 * 32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


@pytest.fixture
def fake_timm(monkeypatch):
    """A stand-in for timm's create_model that resolves weights as timm does: ``source: hf-hub`` (or a
    location in the name) fetches the Hub repo, else a ``state_dict`` in the config is loaded."""
    timm = types.ModuleType("timm")
    data = types.ModuleType("timm.data")
    fetched: list[str] = []

    def create_model(name, pretrained=False, pretrained_cfg_overlay=None, num_classes=10, **kw):
        net = _Tiny(num_classes)
        cfg = dict(pretrained_cfg_overlay or {})
        if pretrained and (":" in name or cfg.get("source") == "hf-hub"):
            fetched.append(cfg.get("hf_hub_id") or name)  # the Hub's weights, not the folder's
            with torch.no_grad():
                net.head.weight.fill_(7.0)
        elif pretrained and "state_dict" in cfg:
            net.load_state_dict(cfg["state_dict"])
        return net

    timm.create_model = create_model
    timm.data = data
    data.resolve_data_config = lambda args, model=None: {"input_size": (3, 32, 32), "mean": (0.5,) * 3,
                                                         "std": (0.25,) * 3, "crop_pct": 1.0}
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.data", data)
    return fetched


def _hub_folder(root: Path, config: dict) -> tuple[Path, dict[str, torch.Tensor]]:
    from safetensors.torch import save_file

    root.mkdir()
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in _Tiny().state_dict().items()}
    save_file(state, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps(config))
    return root, state


def test_hf_hub_local_folder_loads_its_own_weights_not_the_hub_id_in_its_config(tmp_path, fake_timm):
    from robustbench_lta.sources.libs import resolve_hf_hub

    folder, state = _hub_folder(tmp_path / "repo", {
        "architecture": "tiny", "num_classes": 10,
        "pretrained_cfg": {"hf_hub_id": "someone/other-weights", "source": "hf-hub", "mean": [0.5] * 3}})
    resolved = resolve_hf_hub(str(folder))
    assert fake_timm == []  # nothing fetched
    assert torch.equal(resolved.module.net.head.weight, state["head.weight"])


def test_hf_hub_local_folder_whose_architecture_names_a_hub_repo_is_refused(tmp_path, fake_timm):
    folder, _ = _hub_folder(tmp_path / "repo", {"architecture": "hf-hub:someone/other", "num_classes": 10})
    code, _, err = run_cli("sweep", "--model", f"hf-hub:{folder}", "--out", str(tmp_path / "r"), *TINY)
    user_error(code, err, "hf-hub:someone/other", "config.json")
    assert fake_timm == []


def test_hf_hub_model_without_the_local_weights_is_refused(tmp_path, fake_timm, monkeypatch):
    from robustbench_lta.sources import libs

    folder, _ = _hub_folder(tmp_path / "repo", {"architecture": "tiny", "num_classes": 10})
    # a timm that fetches whatever the config says: the check after building still refuses
    monkeypatch.setattr(libs, "local_timm_config", lambda c, p: ("hf-hub:x/y", {}))
    with pytest.raises(UserError, match="does not hold the weights"):
        libs.resolve_hf_hub(str(folder))


# ------------------------------------------------------------------------------ results folder: tmp, locks
def test_temporaries_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    from robustbench_lta.engine.store import ResultStore

    store = ResultStore(tmp_path / "res")
    cell = store.layout.units / "m__fgsm__abc"
    cell.mkdir()
    stale = [cell / ".0-8.parquet.k2j4_x9q.tmp", cell / ".0-8.json.abcdefgh.tmp",
             store.root / ".summary.parquet.a1b2c3d4.tmp"]
    mine = [cell / "notes.tmp", cell / ".mynotes.tmp", store.root / "keep.parquet.a1b2c3d4.tmp"]
    for p in stale + mine:
        p.write_text("x")
    with store.locked():
        assert [p for p in stale if p.exists()] == []
    assert all(p.read_text() == "x" for p in mine)


def test_a_sweep_removes_temporaries_left_in_units(tmp_path):
    out = tmp_path / "r"
    code, _, err = run_cli("sweep", "--model", "smallcnn", "--out", str(out), *TINY)
    assert code == 0, err
    cell = next(p for p in (out / "units").iterdir() if p.is_dir())
    leftover = cell / ".0-8.parquet.q1w2e3r4.tmp"  # as a worker killed mid-write leaves it
    leftover.write_bytes(b"half a parquet")
    code, _, err = run_cli("sweep", "--model", "smallcnn", "--out", str(out), *TINY)
    assert code == 0, err
    assert not leftover.exists()


def test_a_lock_held_on_another_host_names_how_to_break_it(tmp_path, monkeypatch):
    from robustbench_lta.engine.store import BREAK_LOCK_ENV, break_lock

    out = tmp_path / "r"
    out.mkdir()
    lock = out / ".lock"
    holder = {"pid": 4242, "host": "node-that-died", "started": "2026-12-01T10:00:00+00:00"}
    lock.write_text(json.dumps(holder))
    monkeypatch.delenv(BREAK_LOCK_ENV, raising=False)
    code, _, err = run_cli("sweep", "--model", "smallcnn", "--out", str(out), *TINY)
    user_error(code, err, "node-that-died", str(lock), f"{BREAK_LOCK_ENV}=1", "--break-lock")
    assert json.loads(lock.read_text()) == holder  # refusing does not touch it
    code, _, err = run_cli("sweep", "--model", "smallcnn", "--out", str(out), "--break-lock", *TINY)
    assert code == 0, err
    assert not lock.exists() and BREAK_LOCK_ENV not in os.environ  # the flag is for that run only
    lock.write_text(json.dumps(holder))
    monkeypatch.setenv(BREAK_LOCK_ENV, "1")
    code, _, err = run_cli("sweep", "--model", "smallcnn", "--out", str(out), *TINY)
    assert code == 0, err
    assert not lock.exists()  # taken over, then released
    lock.write_text(json.dumps(holder))
    assert break_lock(out) == holder and not lock.exists()
    lock.write_text(json.dumps({"pid": os.getpid(), "host": holder["host"]}))
    monkeypatch.setattr("socket.gethostname", lambda: holder["host"])
    with pytest.raises(UserError, match="still runs on this machine"):
        break_lock(out)  # a live sweep here is never broken


# ------------------------------------------------------------------------------ file modes follow the umask
def test_results_and_checkpoints_are_written_with_the_umask(tmp_path):
    from robustbench_lta.models.registry import create_model
    from robustbench_lta.training.checkpoint import save_checkpoint

    old = os.umask(0o022)
    try:
        out = tmp_path / "r"
        code, _, err = run_cli("sweep", "--model", "smallcnn", "--out", str(out), *TINY)
        assert code == 0, err
        weights = save_checkpoint(create_model("smallcnn", width=0.25), tmp_path / "ck" / "m", {})
        os.umask(0o077)
        private = save_checkpoint(create_model("smallcnn", width=0.25), tmp_path / "ck" / "p", {})
    finally:
        os.umask(old)
    shared = [out / "summary.parquet", out / "samples.parquet", out / "summary.csv", out / "manifest.json",
              out / "sanity.csv",
              *(out / "units").rglob("*.json"), weights, weights.with_suffix(".json")]
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in shared} == {str(p): "0o644" for p in shared}
    for p in (private, private.with_suffix(".json")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
