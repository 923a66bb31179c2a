"""Plugin registry, discovery, verification of attack outputs, and user-facing errors."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from robustbench_lta.errors import UserError
from robustbench_lta.plugins import (
    Attack,
    AttackKind,
    ThreatModel,
    discover,
    get_attack,
    list_attacks,
    perturbation_norms,
    register_attack,
    verify_batch,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).eval()


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 4, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


# -- perturbation norms and verification ------------------------------------------------------
def test_perturbation_norms() -> None:
    x = torch.zeros(2, 3, 2, 2)
    x_adv = x.clone()
    x_adv[0, :, 0, 0] = 0.1  # one pixel, all three channels
    x_adv[1, 0, 0, 0] = 0.3
    x_adv[1, 2, 1, 1] = 0.4  # two pixels
    assert torch.allclose(perturbation_norms(x, x_adv, "linf"), torch.tensor([0.1, 0.4]))
    assert torch.allclose(perturbation_norms(x, x_adv, "l2"), torch.tensor([math.sqrt(0.03), 0.5]))
    assert perturbation_norms(x, x_adv, "l0").tolist() == [1.0, 2.0]
    assert torch.equal(perturbation_norms(x, x_adv, ThreatModel.NONE), perturbation_norms(x, x_adv, "linf"))
    assert perturbation_norms(x, x_adv, "l2").dtype == torch.float32


def test_verify_batch_accepts_valid_and_flags_problems() -> None:
    x, _ = _batch(128)
    x = 0.25 + 0.5 * x  # away from 0 and 1, so nothing below is clipped
    eps = 8 / 255
    ok = (x + eps * torch.sign(torch.randn_like(x))).clamp(0, 1)
    assert verify_batch(x, ok, eps, "linf", True).ok

    over = ok.clone()
    over[:3] = x[:3] + 0.04 * torch.sign(torch.randn_like(x[:3]))
    res = verify_batch(x, over, eps, "linf", True)
    assert not res.ok
    assert res.reason == "3 of 128 samples exceed the linf budget 0.03137 (max 0.04)"
    assert res.norms is not None and res.norms.shape == (128,)
    # unbounded attacks are not held to eps
    assert verify_batch(x, over, eps, "linf", False).ok

    nan = ok.clone()
    nan[5, 0, 0, 0] = float("nan")
    res = verify_batch(x, nan, eps, "linf", True)
    assert not res.ok and "NaN" in res.reason and "1 of 128" in res.reason

    out_of_range = ok.clone()
    out_of_range[0, 0, 0, 0] = 1.01
    res = verify_batch(x, out_of_range, eps, "linf", False)
    assert not res.ok and "[0,1]" in res.reason

    res = verify_batch(x, ok[:, :, :2], eps, "linf", True)
    assert not res.ok and "shape" in res.reason
    res = verify_batch(x, (ok * 255).to(torch.uint8), eps, "linf", True)
    assert not res.ok and "dtype" in res.reason
    assert not verify_batch(x, ok.numpy(), eps, "linf", True).ok


def test_verify_batch_l2_and_tolerance() -> None:
    x = torch.full((2, 3, 4, 4), 0.5)
    delta = torch.randn_like(x)
    delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert verify_batch(x, x + 0.5 * delta, 0.5, "l2", True).ok  # exactly on the sphere
    res = verify_batch(x, x + 0.6 * delta, 0.5, "l2", True)
    assert not res.ok and "2 of 2 samples exceed the l2 budget 0.5 (max 0.6)" in res.reason
    assert verify_batch(x, x + 0.6 * delta, float("inf"), "l2", True).ok


# -- registration ------------------------------------------------------------------------------
def test_register_attack_validates() -> None:
    with pytest.raises(UserError, match="name"):

        @register_attack
        class BadName(Attack):
            name = "Bad Name"

            def perturb(self, model, x, y, eps):
                return x

    with pytest.raises(UserError, match="threat_model"):

        @register_attack
        class BadNorm(Attack):
            name = "bad-norm-test"
            threat_model = "l7"  # type: ignore[assignment]

            def perturb(self, model, x, y, eps):
                return x

    with pytest.raises(UserError, match="perturb"):

        @register_attack
        class NoPerturb(Attack):  # type: ignore[abstract]
            name = "no-perturb-test"

    with pytest.raises(UserError, match="defined twice"):

        @register_attack
        class Clash(Attack):
            name = "fgsm"

            def perturb(self, model, x, y, eps):
                return x


def test_register_from_python_and_reregister_replaces() -> None:
    @register_attack
    class Identity(Attack):
        """Returns the input unchanged."""

        name = "identity-test"
        threat_model = "linf"  # strings are converted to the enum

        def perturb(self, model, x, y, eps):
            return x.clone()

    assert Identity.threat_model is ThreatModel.LINF and Identity.source == "python"

    @register_attack
    class Identity2(Identity):
        name = "identity-test"

    info = {a.name: a for a in list_attacks()}["identity-test"]
    assert info.source == "python" and info.summary == "Returns the input unchanged."
    assert isinstance(get_attack("identity-test"), Identity2)


# -- lookup errors -----------------------------------------------------------------------------
def test_unknown_attack_suggests_close_matches() -> None:
    with pytest.raises(UserError, match="unknown attack 'pgd-lnf'.*pgd-linf"):
        get_attack("pgd-lnf")


def test_unknown_parameter() -> None:
    with pytest.raises(UserError, match="unknown parameter.*stepz.*known: .*steps"):
        get_attack("pgd-linf", stepz=3)


def test_builtin_info_fields() -> None:
    infos = {a.name: a for a in list_attacks()}
    assert infos["fgsm"].multi_eps and infos["fgsm"].source == "builtin"
    assert infos["pgd-linf"].iterative and infos["pgd-linf"].randomized
    assert infos["cw-l2"].bounded is False and infos["cw-l2"].threat_model == "l2"
    assert infos["boundary"].kind == AttackKind.DECISION.value
    assert infos["gaussian-noise"].kind == "random"


# -- folder plugins ------------------------------------------------------------------------------
USER_PLUGIN = '''
import torch
from robustbench_lta.plugins import Attack, AttackKind, ThreatModel, register_attack


@register_attack
class SignNoise(Attack):
    """Random signs of size eps: a user plugin."""

    name = "user-sign-noise"
    threat_model = ThreatModel.LINF
    kind = AttackKind.RANDOM
    randomized = True
    defaults = {"scale": 1.0}

    def perturb(self, model, x, y, eps):
        gen = self.generator(x.device)
        signs = torch.randint(0, 2, x.shape, generator=gen, device=x.device).to(x.dtype) * 2 - 1
        return (x + self.params["scale"] * eps * signs).clamp(0, 1)
'''

BROKEN_PLUGIN = '''
import torch
from robustbench_lta.plugins import Attack, register_attack


@register_attack
class OverBudget(Attack):
    """Moves twice as far as allowed."""

    name = "broken-over-budget"

    def perturb(self, model, x, y, eps):
        return (x + 2 * eps).clamp(0, 1)


@register_attack
class MakesNaN(Attack):
    """Returns NaN."""

    name = "broken-nan"

    def perturb(self, model, x, y, eps):
        return torch.full_like(x, float("nan"))


@register_attack
class Raises(Attack):
    """Crashes."""

    name = "broken-raises"

    def perturb(self, model, x, y, eps):
        raise RuntimeError("boom")
'''


def test_user_plugin_folder_is_discovered(tmp_path: Path) -> None:
    (tmp_path / "sign_noise.py").write_text(textwrap.dedent(USER_PLUGIN))
    (tmp_path / "_helper.py").write_text("raise RuntimeError('private helpers are not imported')\n")
    infos = {a.name: a for a in discover([tmp_path])}
    info = infos["user-sign-noise"]
    assert info.source == f"folder:{tmp_path.resolve()}"
    assert info.kind == "random" and info.summary == "Random signs of size eps: a user plugin."
    assert "user-sign-noise" in {a.name for a in list_attacks()}
    # idempotent: discovering again (same or overlapping folder sets) does not re-import or clash
    discover([tmp_path])
    discover([str(tmp_path)])
    x, y = _batch()
    attack = get_attack("user-sign-noise", seed=1, scale=0.5)
    x_adv = attack(_model(), x, y, 0.1)
    assert verify_batch(x, x_adv, 0.1, attack.threat_model, attack.bounded).ok


def test_broken_plugins_fail_verification(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(textwrap.dedent(BROKEN_PLUGIN))
    discover([tmp_path])
    model, (x, y) = _model(), _batch()
    over = get_attack("broken-over-budget")
    res = verify_batch(x, over(model, x, y, 0.05), 0.05, over.threat_model, over.bounded)
    assert not res.ok and "exceed the linf budget" in res.reason
    nan = get_attack("broken-nan")
    res = verify_batch(x, nan(model, x, y, 0.05), 0.05, nan.threat_model, nan.bounded)
    assert not res.ok and "NaN" in res.reason
    with pytest.raises(RuntimeError, match="boom"):
        get_attack("broken-raises")(model, x, y, 0.05)


def test_plugin_that_fails_to_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("import torch\nraise ValueError('missing\\nweights')\n")
    with pytest.raises(UserError) as info:
        discover([tmp_path])
    message = str(info.value)
    assert str(bad) in message and "ValueError: missing weights" in message and "\n" not in message
    syntax = tmp_path / "syntax.py"
    bad.unlink()
    syntax.write_text("def broken(:\n")
    with pytest.raises(UserError, match="syntax.py failed to import: SyntaxError"):
        discover([tmp_path, tmp_path / "."])


def test_duplicate_name_across_folders(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    code = textwrap.dedent(USER_PLUGIN).replace("user-sign-noise", "dup-test")
    (a / "p.py").write_text(code)
    (b / "p.py").write_text(code)
    discover([a])
    with pytest.raises(UserError, match="'dup-test' is defined twice.*rename"):
        discover([b])


def test_missing_plugin_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        discover([tmp_path / "nope"])


def test_docs_example_works(tmp_path: Path) -> None:
    """The complete example in docs/plugins.md runs as written."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    start = doc.index("```python\n", doc.index("<!-- example -->")) + len("```python\n")
    code = doc[start : doc.index("```", start)]
    (tmp_path / "my_attack.py").write_text(code)
    infos = {a.name: a for a in discover([tmp_path])}
    assert infos["random-sign"].source.startswith("folder:")
    model, (x, y) = _model(), _batch()
    attack = get_attack("random-sign", seed=0)
    x_adv = attack(model, x, y, 8 / 255)
    assert verify_batch(x, x_adv, 8 / 255, attack.threat_model, attack.bounded).ok


def test_readme_example_works(tmp_path: Path) -> None:
    """The plugin in README.md ("Your own attack") works when copied into a folder, as the README says."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("```python\n# my_attacks/uniform_noise.py\n") + len("```python\n")
    code = readme[start : readme.index("```", start)]
    assert len(code.strip().splitlines()) <= 25  # short enough to copy
    (tmp_path / "uniform_noise.py").write_text(code)
    infos = {a.name: a for a in discover([tmp_path])}
    assert infos["uniform-noise"].source.startswith("folder:")
    model, (x, y) = _model(), _batch()
    attack = get_attack("uniform-noise", seed=0)
    x_adv = attack(model, x, y, 8 / 255)
    assert verify_batch(x, x_adv, 8 / 255, attack.threat_model, attack.bounded).ok
    assert (x_adv != x).any()


def test_best_iterate_keeps_first_fooling_else_highest_loss() -> None:
    from robustbench_lta.plugins import BestIterate

    x = torch.zeros(2, 1, 1, 1)
    y = torch.tensor([0, 0])
    t = BestIterate(x, y)
    idx = torch.tensor([0, 1])
    # step 1: sample 0 fooled (argmax 1), sample 1 not (loss moderate)
    hit = t.update(idx, torch.full((2, 1, 1, 1), 1.0), torch.tensor([[0.0, 2.0], [1.0, 0.0]]))
    assert hit.tolist() == [True, False]
    # step 2: sample 0 fooled again with a higher loss: the FIRST fooling iterate stays;
    # sample 1 not fooled but with a higher loss: this iterate replaces the first
    t.update(idx, torch.full((2, 1, 1, 1), 2.0), torch.tensor([[0.0, 5.0], [0.5, 0.0]]))
    # step 3: sample 1 with a lower loss: ignored
    t.update(idx[1:], torch.full((1, 1, 1, 1), 3.0), torch.tensor([[3.0, 0.0]]))
    assert t.best.flatten().tolist() == [1.0, 2.0]
    assert t.fooled.tolist() == [True, False]


# -- discovery: one mechanism for attacks, models and datasets -----------------------------------
def test_duplicate_name_in_one_folder_is_an_error(tmp_path: Path) -> None:
    """Issue 11 item 8: two files of one folder with the same attack name; no silent file-order winner."""
    code = textwrap.dedent(USER_PLUGIN).replace("user-sign-noise", "dup-in-folder")
    (tmp_path / "a_first.py").write_text(code)
    (tmp_path / "b_second.py").write_text(code)
    with pytest.raises(UserError, match="'dup-in-folder' is defined twice.*a_first.py.*b_second.py.*rename"):
        discover([tmp_path])


USER_MODEL_AND_DATA = '''
import numpy as np
from torch import nn

from robustbench_lta import register_dataset, register_model
from robustbench_lta.data import ImageDataset


@register_model
def plugin_linear_net(num_classes=10, width=1.0):
    """A linear model from a plugin file."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))


@register_dataset("plugin-noise", description="noise", num_classes=2, image_size=(8, 8),
                  mean=(0.5,) * 3, std=(0.25,) * 3)
def plugin_noise(split, root, download, n, seed):
    rng = np.random.default_rng(seed)
    return ImageDataset(rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8), [0, 1] * 3,
                        classes=["a", "b"], name="plugin-noise", mean=(0.5,) * 3, std=(0.25,) * 3)
'''


def test_one_plugin_file_registers_a_model_and_a_dataset(tmp_path: Path) -> None:
    from robustbench_lta.data import dataset_info, load_dataset
    from robustbench_lta.models import create_model, model_info

    plugin = tmp_path / "mine.py"
    plugin.write_text(USER_MODEL_AND_DATA)
    discover([plugin])  # a single file, not a folder
    info = model_info("plugin_linear_net")
    assert info.source == f"file:{plugin.resolve()}" and info.origin.file == str(plugin.resolve())
    assert dataset_info("plugin-noise").source == f"file:{plugin.resolve()}"
    model = create_model("plugin_linear_net", num_classes=2)
    assert model.registry_origin["file"] == str(plugin.resolve())
    x, _ = load_dataset("plugin-noise").tensors()
    assert model.eval()(x).shape == (6, 2)
    discover([tmp_path])  # the same file through its folder: imported once, no clash


def test_a_new_file_in_a_package_is_registered_without_a_second_edit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The built-in packages are scanned (pkgutil): a new module needs no import line anywhere."""
    from robustbench_lta.discovery import import_package_modules
    from robustbench_lta.models import list_models
    from robustbench_lta.models import registry as model_registry

    pkg = tmp_path / "zoo_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "new_arch.py").write_text(
        "from torch import nn\nfrom robustbench_lta import register_model\n\n"
        "@register_model\ndef zoo_new_arch(num_classes=10, width=1.0):\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n"
    )
    (pkg / "_private.py").write_text("raise RuntimeError('private modules are not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import_package_modules("zoo_pkg", "model")
        assert "zoo_new_arch" in list_models()
        assert model_registry.model_info("zoo_new_arch").source == "builtin"
    finally:
        model_registry._REGISTRY.pop("zoo_new_arch", None)


def _import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports, read from the source (static, like a linter would)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "robustbench_lta"
    mods = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                graph[mod] |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    graph[mod] |= {sub} if sub in mods else ({target} if target in mods else set())
    return graph


def test_no_import_cycles_in_the_package() -> None:
    """No registry imports its implementations (nor anything else in a circle): imports point down."""
    graph = _import_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    for registry, package in (("robustbench_lta.models.registry", "robustbench_lta.models"),
                              ("robustbench_lta.data.registry", "robustbench_lta.data")):
        siblings = {m for m in graph[registry] if m.startswith(package + ".")}
        assert siblings <= {f"{package}.base"}, f"{registry} imports its implementations: {siblings}"
    assert not {m for m in graph["robustbench_lta.discovery"] if m != "robustbench_lta.errors"}
