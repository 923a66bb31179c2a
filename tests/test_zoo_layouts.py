"""RobustBench zoo entries load from files in each key layout RobustBench accepts (checked on the meta
device, against RobustBench's own load_model code), and real-size entries with planted random
weights give the same logits as RobustBench's loader. The whole zoo: benchmarks/zoo_table.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustbench_lta.errors import UserError
from robustbench_lta.sources import resolve_model_source

pytest.importorskip("timm")
try:  # robustbench imports the authors' AutoAttack as `autoattack`: import_robustbench aliases it
    from robustbench_lta.sources.zoo import import_robustbench

    import_robustbench()
except UserError:
    pytest.skip("the zoo extra is not installed", allow_module_level=True)

# one entry of each kind: plain CIFAR WRN, 'state_dict'+'module.' files, non-strict with mu/sigma,
# files under 'last', ImageNet wrappers (normalize + model.), ImageNet without the wrapper prefix,
# an entry RobustBench builds through timm, CIFAR-100 and L2 boards
SAMPLE = {
    "cifar10/Linf/Carmon2019Unlabeled", "cifar10/Linf/Wong2020Fast",
    "cifar10/Linf/Andriushchenko2020Understanding",
    "cifar10/L2/Augustin2020Adversarial", "cifar100/Linf/Debenedetti2022Light_XCiT-S12",
    "imagenet/Linf/Salman2020Do_R18", "imagenet/Linf/Singh2023Revisiting_ConvNeXt-T-ConvStem",
}


@pytest.fixture(scope="module")
def zoo() -> tuple[object, object]:
    return import_robustbench()


def test_sample_entries_load_in_every_layout_robustbench_accepts(zoo: object) -> None:
    from robustbench_lta.sources.zoo_audit import audit

    checks = {f"{c.dataset}/{c.threat}/{c.name}": c for c in audit(SAMPLE)}
    assert set(checks) == SAMPLE
    for key, check in checks.items():
        assert check.loaded, (key, check.reason)
        assert check.layouts["plain"] == check.layouts["module."] == "ok", key
    # the two cases RobustBench loads non-strict: files without the normalisation buffers
    assert checks["cifar10/Linf/Wong2020Fast"].layouts["no norm buffers"] == "ok"
    assert checks["imagenet/Linf/Salman2020Do_R18"].layouts["wrapper model."] == "ok"
    assert checks["imagenet/Linf/Salman2020Do_R18"].layouts["no norm buffers"] == "ok"


def test_unloadable_entries_say_why(zoo: object) -> None:
    from robustbench_lta.sources.zoo_audit import check_entry

    model_zoo, enums = zoo  # type: ignore[misc]
    boards = model_zoo.model_dicts  # type: ignore[attr-defined]
    c10 = boards[enums.BenchmarkDataset("cifar10")]  # type: ignore[attr-defined]
    linf, corruptions = c10[enums.ThreatModel("Linf")], c10[enums.ThreatModel("corruptions")]  # type: ignore[attr-defined]
    ens = check_entry("cifar10", "Linf", "Chen2020Adversarial", linf["Chen2020Adversarial"])
    assert not ens.loaded and ens.reason == "ensemble of 3 files"
    corr = check_entry("cifar10", "corruptions", "Standard", corruptions["Standard"])
    assert not corr.loaded and corr.reason.startswith("corruptions")


def _plant(root: Path, zoo: object, dataset: str, threat: str, name: str, layout: str, seed: int = 0
           ) -> torch.nn.Module:
    """A real-size entry with random weights (random BN statistics too) saved in ``layout``."""
    model_zoo, enums = zoo  # type: ignore[misc]
    board = model_zoo.model_dicts[enums.BenchmarkDataset(dataset)]  # type: ignore[attr-defined]
    entry = board[enums.ThreatModel(threat)][name]  # type: ignore[attr-defined]
    torch.manual_seed(seed)
    net = entry["model"]()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    sd = net.state_dict()
    state = {
        "module.": {f"module.{k}": v for k, v in sd.items()},
        "state_dict+module.": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        "plain": dict(sd),
        "inner under model.": {k: v for k, v in sd.items() if k.startswith("model.")},
        "no mu/sigma": {k: v for k, v in sd.items() if k not in ("mu", "sigma")},
    }[layout]
    path = root / dataset / threat / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return net


@pytest.mark.parametrize("dataset,threat,name,layout,size", [
    ("cifar10", "Linf", "Ding2020MMA", "state_dict+module.", 32),      # a CIFAR WideResNet-28-4
    ("imagenet", "Linf", "Salman2020Do_R18", "plain", 64),             # the wrapper, normalize buffers in
    ("imagenet", "Linf", "Salman2020Do_R18", "inner under model.", 64),  # ... and without them
    ("cifar10", "Linf", "Wong2020Fast", "no mu/sigma", 32),            # loaded non-strict by RobustBench
])
def test_logits_equal_robustbench_load_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zoo: object,
                                             dataset: str, threat: str, name: str, layout: str,
                                             size: int) -> None:
    from robustbench.utils import load_model

    _plant(tmp_path, zoo, dataset, threat, name, layout)
    monkeypatch.setenv("ROBUSTBENCH_MODEL_DIR", str(tmp_path))
    ours = resolve_model_source(f"robustbench:{dataset}/{threat}/{name}").module.eval()
    theirs = load_model(name, model_dir=str(tmp_path), dataset=dataset, threat_model=threat).eval()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert torch.equal(a, b), (a - b).abs().max()
    assert a.abs().max() > 0


def test_wrong_files_get_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        zoo: object) -> None:
    monkeypatch.setenv("ROBUSTBENCH_MODEL_DIR", str(tmp_path))
    net = _plant(tmp_path, zoo, "cifar10", "Linf", "Wong2020Fast", "plain")
    path = tmp_path / "cifar10" / "Linf" / "Wong2020Fast.pt"
    sd = net.state_dict()
    torch.save({**sd, "conv1.weight": torch.zeros(8, 3, 3, 3)}, path)
    with pytest.raises(UserError, match=r"differ in shape, e.g. conv1.weight \(8, 3, 3, 3\) in the file"):
        resolve_model_source("robustbench:cifar10/Linf/Wong2020Fast")
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(UserError, match="no key matches: the file is not this entry's"):
        resolve_model_source("robustbench:cifar10/Linf/Wong2020Fast")
    # an entry RobustBench loads strictly must carry its normalisation buffers
    carmon = _plant(tmp_path, zoo, "cifar10", "Linf", "Carmon2019Unlabeled", "plain")
    assert not any(k in ("mu", "sigma") for k in carmon.state_dict())  # (it has none: strict load)
    torch.save({k: v for k, v in carmon.state_dict().items() if k != "fc.bias"},
               tmp_path / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt")
    with pytest.raises(UserError, match=r"missing 1 \(e.g. fc.bias\)"):
        resolve_model_source("robustbench:cifar10/Linf/Carmon2019Unlabeled")
