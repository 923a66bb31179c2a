"""Engine v2: shards, content keys, retries, the caller's module handed back, any input layout,
streamed datasets, survivors-only multi-budget evaluation, work counters, the manifest protocol."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from robustbench_lta.engine.api import run_sweep
from robustbench_lta.errors import UserError
from robustbench_lta.results import SUMMARY_COLUMNS

EPS = [0.0, 2 / 255, 8 / 255]
KW = dict(progress=False, sanity_samples=8, attention_samples=2)
DETERMINISTIC = ["fgsm", {"name": "pgd-linf", "params": {"steps": 3, "random_start": False}}, "fgm-l2"]
RUN_COLUMNS = ["seconds"]


def _tables(out):
    return {n: pd.read_parquet(out / f"{n}.parquet") for n in ("summary", "samples", "attention")}


def test_results_do_not_depend_on_the_shard_size(trained_checkpoints, tmp_path):
    models = {k: str(v) for k, v in trained_checkpoints.items()}
    a = run_sweep(models, DETERMINISTIC, EPS, n=64, batch_size=16, out=tmp_path / "a", shard_size=1000, **KW)
    b = run_sweep(models, DETERMINISTIC, EPS, n=64, batch_size=16, out=tmp_path / "b", shard_size=16, **KW)
    # norms and drift are float32 arithmetic over batches of other shapes: equal to rounding
    pd.testing.assert_frame_equal(a.drop(columns=RUN_COLUMNS), b.drop(columns=RUN_COLUMNS), check_exact=False,
                                  atol=1e-5)
    ta, tb = _tables(tmp_path / "a"), _tables(tmp_path / "b")
    for name in ta:
        drop = [c for c in RUN_COLUMNS if c in ta[name].columns]
        pd.testing.assert_frame_equal(ta[name].drop(columns=drop), tb[name].drop(columns=drop),
                                      check_exact=False, atol=1e-5)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["counts"]["units_run"] == 2 * 3 * 4
    # resuming folder b with another shard size reuses every stored unit
    c = run_sweep(models, DETERMINISTIC, EPS, n=64, batch_size=16, out=tmp_path / "b", shard_size=24, **KW)
    assert c.attrs["counts"]["units_run"] == 0
    pd.testing.assert_frame_equal(c.drop(columns=RUN_COLUMNS), b.drop(columns=RUN_COLUMNS))
    assert (a["status"] == "ok").all()


def test_cell_keys_are_content_not_paths(trained_checkpoints, tmp_path):
    src = trained_checkpoints["smallcnn"]
    moved = tmp_path / "elsewhere" / "model"
    moved.parent.mkdir()
    import shutil

    shutil.copytree(src.parent, moved)
    copy = moved / src.name
    first = run_sweep({"m": str(src)}, ["fgsm"], EPS, n=32, out=tmp_path / "o", **KW)
    again = run_sweep({"m": str(copy)}, ["fgsm"], EPS, n=32, out=tmp_path / "o", **KW)
    assert again.attrs["counts"]["units_run"] == 0
    pd.testing.assert_frame_equal(first.drop(columns=RUN_COLUMNS), again.drop(columns=RUN_COLUMNS))


FLAKY = '''
import os
from robustbench_lta.plugins import Attack, ThreatModel, register_attack


@register_attack
class Flaky(Attack):
    """Fails while a marker file exists (a transient fault), then behaves like a no-op attack."""
    name = "test-flaky"
    threat_model = ThreatModel.LINF

    def perturb(self, model, x, y, eps):
        if os.path.exists(os.environ["FLAKY_MARKER"]):
            raise RuntimeError("transient fault")
        return x.clone()


@register_attack
class ZeroWeights(Attack):
    """Writes zeros into the model's weights: a plugin bug that would poison every later cell."""
    name = "test-zero-weights"
    threat_model = ThreatModel.LINF

    def perturb(self, model, x, y, eps):
        import torch
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0)
        return x.clone()
'''


def test_failed_cells_are_retried_and_a_weight_changing_plugin_is_invalid(trained_checkpoints, tmp_path,
                                                                           monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "flaky.py").write_text(FLAKY)
    marker = tmp_path / "marker"
    marker.write_text("")
    monkeypatch.setenv("FLAKY_MARKER", str(marker))
    models = {"m": str(trained_checkpoints["smallcnn"])}
    attacks = ["test-zero-weights", "test-flaky", "gaussian-noise", "fgsm"]
    kw = dict(n=32, out=tmp_path / "o", plugins=[plugins], **KW)
    first = run_sweep(models, attacks, [0.0, 4 / 255], **kw).set_index(["attack", "eps"])
    assert (first.loc["test-zero-weights", "status"] == "invalid").all()
    assert "changed the model" in first.loc["test-zero-weights", "message"].iloc[0]
    assert first.loc[("test-flaky", 4 / 255), "status"] == "failed"  # eps 0 needs no attack call
    # the weights were restored: noise at eps 0 equals clean accuracy, later cells are ok
    noise = first.loc[("gaussian-noise", 0.0)]
    assert noise["status"] == "ok" and noise["robust_acc"] == pytest.approx(noise["clean_acc"])
    marker.unlink()
    second = run_sweep(models, attacks, [0.0, 4 / 255], **kw).set_index(["attack", "eps"])
    assert (second.loc["test-flaky", "status"] == "ok").all()  # failed cells are retried
    assert (second.loc["test-zero-weights", "status"] == "invalid").all()  # invalid ones kept
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["counts"]["cells_invalid"] == 2 and manifest["counts"]["cells_failed"] == 0


class _TinyNet(torch.nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                       torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.AdaptiveAvgPool2d(1),
                                       torch.nn.Flatten(), torch.nn.Linear(8, classes))

    def forward(self, x):
        return self.net(x)


def _state(module: torch.nn.Module) -> dict:
    return {"training": [m.training for m in module.modules()],
            "requires_grad": [p.requires_grad for p in module.parameters()],
            "nchw": [p.is_contiguous() for p in module.parameters()],
            "device": {p.device.type for p in module.parameters()},
            "weights": [p.detach().clone() for p in module.parameters()]}


def test_the_callers_module_comes_back_as_it_was(tmp_path):
    net = _TinyNet().train()
    net.net[-1].weight.requires_grad_(False)  # a mixed set of trainable parameters
    before = _state(net)
    x, y = torch.rand(24, 3, 16, 16), torch.randint(0, 10, (24,))
    run_sweep({"tiny": net}, ["fgsm"], [0.0, 0.05], data=(x, y), out=tmp_path / "a", **KW)
    after = _state(net)
    for key in ("training", "requires_grad", "nchw", "device"):
        assert after[key] == before[key], key
    assert all(torch.equal(a, b) for a, b in zip(after["weights"], before["weights"], strict=True))
    # also when the sweep raises half-way
    with pytest.raises(UserError):
        run_sweep({"tiny": net}, ["fgsm"], [0.05], data=(x * 300, y), out=tmp_path / "b", **KW)
    assert _state(net)["training"] == before["training"]
    assert _state(net)["requires_grad"] == before["requires_grad"]


def test_any_input_layout_gives_the_same_answer(tmp_path):
    net = _TinyNet().eval()
    nhwc = torch.rand(32, 16, 16, 3)
    y = torch.randint(0, 10, (32,))
    permuted = nhwc.permute(0, 3, 1, 2)  # a non-contiguous NCHW view
    assert not permuted.is_contiguous()
    a = run_sweep({"t": net}, DETERMINISTIC, EPS, data=(permuted, y), out=tmp_path / "a", **KW)
    b = run_sweep({"t": net}, DETERMINISTIC, EPS, data=(permuted.contiguous(), y), out=tmp_path / "b", **KW)
    c = run_sweep({"t": net}, DETERMINISTIC, EPS, data=((permuted * 255).round().to(torch.uint8), y),
                  out=tmp_path / "c", **KW)
    assert (a["status"] == "ok").all()
    pd.testing.assert_frame_equal(a.drop(columns=RUN_COLUMNS), b.drop(columns=RUN_COLUMNS))
    assert (c["status"] == "ok").all()


def test_classes_of_a_tensor_pair_come_from_the_model_not_the_labels(tmp_path):
    net = _TinyNet(classes=10).eval()
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 5, (16,))  # no label above 4 in this slice
    run_sweep({"t": net}, ["fgsm"], [0.0], data=(x, y), out=tmp_path / "a", **KW)
    assert len(json.loads((tmp_path / "a" / "manifest.json").read_text())["dataset"]["classes"]) == 10
    run_sweep({"t": net}, ["fgsm"], [0.0], data=(x, y), classes=list("abcdefghij"), out=tmp_path / "b", **KW)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["dataset"]["classes"][0] == "a"


class _LazyImages(torch.utils.data.Dataset):
    """Images made on demand, never stored; counts how many items were read."""

    def __init__(self, n: int) -> None:
        self.n, self.reads = n, 0
        self.classes = [str(i) for i in range(10)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.reads += 1
        g = torch.Generator().manual_seed(i)
        return torch.rand(3, 16, 16, generator=g), i % 10


def test_a_dataset_streams_and_matches_the_in_memory_path(tmp_path):
    net = _TinyNet().eval()
    lazy = _LazyImages(48)
    x = torch.stack([lazy[i][0] for i in range(48)])
    y = torch.tensor([i % 10 for i in range(48)])
    a = run_sweep({"t": net}, DETERMINISTIC, EPS, data=lazy, out=tmp_path / "a", shard_size=16, **KW)
    b = run_sweep({"t": net}, DETERMINISTIC, EPS, data=(x, y), out=tmp_path / "b", shard_size=16, **KW)
    keep = [c for c in SUMMARY_COLUMNS if c not in ("seconds", "dataset")]
    pd.testing.assert_frame_equal(a[keep], b[keep])
    loader = torch.utils.data.DataLoader(lazy, batch_size=7)
    c = run_sweep({"t": net}, DETERMINISTIC, EPS, data=loader, out=tmp_path / "c", **KW)
    pd.testing.assert_frame_equal(c[keep], b[keep])


def test_multi_budget_attacks_evaluate_only_survivors_and_count_work(trained_checkpoints, tmp_path):
    models = {"m": str(trained_checkpoints["smallcnn"])}
    grid = [i / 255 for i in range(1, 9)]
    kw = dict(n=96, batch_size=32, out=tmp_path / "w", progress=False, sanity_samples=0, attention_samples=0)
    worst = run_sweep(models, ["fgsm"], grid, **kw)
    per = run_sweep(models, ["fgsm"], grid, accounting="per-attack", **{**kw, "out": tmp_path / "p"})
    samples = pd.read_parquet(tmp_path / "w" / "samples.parquet")
    # robust flags identical to evaluating every budget on every clean-correct sample
    cols = ["eps", "robust_acc", "clean_acc"]
    pd.testing.assert_frame_equal(worst[worst["attack"] == "fgsm"][cols].reset_index(drop=True),
                                  per[per["attack"] == "fgsm"][cols].reset_index(drop=True))
    # work: clean pass + gradient pass on the clean-correct + one forward per survivor per budget
    first = samples[samples["eps"] == grid[0]]
    correct = int((first["clean_pred"] == first["label"]).sum())
    survivors = sum(int(((samples["eps"] == e) & samples["attacked"]).sum()) for e in grid)
    fgsm = worst[worst["attack"] == "fgsm"]
    assert int(fgsm["backward"].sum()) == correct
    assert int(fgsm["forward"].sum()) == 96 + correct + survivors
    assert int(per[per["attack"] == "fgsm"]["forward"].sum()) == 96 + correct + len(grid) * correct
    assert math.isclose(worst[worst["attack"] == "worst-case"]["robust_acc"].iloc[-1],
                        fgsm["robust_acc"].iloc[-1])


def test_survivors_only_flags_equal_every_budget_evaluated_for_each_multi_budget_attack(trained_checkpoints,
                                                                                         tmp_path):
    """Per sample: broken at eps k under worst-case accounting == broken at some eps <= k when every
    budget is evaluated on every clean-correct sample (per-attack accounting)."""
    models = {"m": str(trained_checkpoints["smallcnn"])}
    attacks = [{"name": "fgsm"}, {"name": "fgm-l2"}]
    kw = dict(n=64, batch_size=32, progress=False, sanity_samples=0, attention_samples=0)
    grid = [i / 255 for i in range(1, 9)]
    run_sweep(models, attacks, grid, out=tmp_path / "w", **kw)
    run_sweep(models, attacks, grid, out=tmp_path / "p", accounting="per-attack", **kw)
    worst = pd.read_parquet(tmp_path / "w" / "samples.parquet")
    every = pd.read_parquet(tmp_path / "p" / "samples.parquet")
    for attack in ("fgsm", "fgm-l2"):
        w = worst[worst["attack"] == attack].pivot(index="index", columns="eps", values="broken")
        e = every[every["attack"] == attack].pivot(index="index", columns="eps", values="broken")
        assert e.to_numpy().any(), attack  # the attack breaks something: the comparison means something
        assert (w.to_numpy() == np.logical_or.accumulate(e.to_numpy(), axis=1)).all(), attack


def test_manifest_says_running_until_the_tables_are_written(trained_checkpoints, tmp_path, monkeypatch):
    from robustbench_lta.engine import finish

    models = {"m": str(trained_checkpoints["smallcnn"])}

    def dying(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("robustbench_lta.engine.sweep.assemble", dying)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(models, ["fgsm"], EPS, n=32, out=tmp_path / "o", **KW)
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["finished"] is None
    assert not (tmp_path / "o" / ".lock").exists()
    monkeypatch.setattr("robustbench_lta.engine.sweep.assemble", finish.assemble)
    run_sweep(models, ["fgsm"], EPS, n=32, out=tmp_path / "o", **KW)
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and set(manifest["tables"]) >= {"summary", "samples"}


def test_a_second_sweep_into_a_locked_or_finished_folder_is_refused(trained_checkpoints, tmp_path):
    import os
    import socket

    models = {"m": str(trained_checkpoints["smallcnn"])}
    out = tmp_path / "o"
    run_sweep(models, ["fgsm", "gaussian-noise"], EPS, n=32, out=out, **KW)
    with pytest.raises(UserError, match="would replace"):
        run_sweep(models, ["fgsm"], EPS, n=32, out=out, **KW)
    # adding an attack is fine (resume folds it into the worst case)
    more = run_sweep(models, ["fgsm", "gaussian-noise", "fgm-l2"], EPS, n=32, out=out, **KW)
    assert "fgm-l2" in set(more["attack"])
    run_sweep(models, ["fgsm"], EPS, n=32, out=out, replace=True, **KW)
    (out / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(UserError, match="another sweep"):
        run_sweep(models, ["fgsm"], EPS, n=32, out=out, **KW)
