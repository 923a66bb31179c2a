"""Model layer: registry, normalisation, every registered architecture, attention maths by hand."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lta.errors import UserError
from robustbench_lta.models import registry as reg
from robustbench_lta.models.attention import AttentionBlock, AttentionHead, LocalAttention
from robustbench_lta.models.base import ImageClassifier, NormalizedModel, parameter_count, scale_channels
from robustbench_lta.models.registry import create_model, list_models, model_info, register_model

TINY = 0.0625
ALL_MODELS = list_models()


def _expected_sizes(name: str) -> list[int]:
    info = model_info(name)
    if info.attention_levels == 0:
        return []
    return [32, 16, 8][3 - info.attention_levels :]


def _batch(name: str) -> int:
    return 1 if "resnet164" in name else 2


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------- registry
def test_registry_contents() -> None:
    assert len(ALL_MODELS) >= 18
    vgg_att = list_models("vgg16_att*")
    assert len(vgg_att) == 12
    assert {
        f"vgg16_att{n}_{h}_{c}" for n in (1, 2, 3) for h in ("concat", "indep") for c in ("dp", "pc")
    } == set(vgg_att)
    for name in (
        "vgg16",
        "resnet18",
        "resnet164",
        "resnet18_att2_concat_pc",
        "resnet164_att2_concat_pc",
        "resnet164_att3_concat_pc",
    ):
        assert name in ALL_MODELS
    assert list_models("resnet164*") == sorted(list_models("resnet164*"))
    assert list_models("nothing*") == []
    info = model_info("vgg16_att3_indep_dp")
    assert (info.family, info.attention_levels, info.compatibility, info.head) == ("vgg", 3, "dp", "indep")
    base = model_info("resnet164")
    assert (base.family, base.attention_levels, base.compatibility, base.head) == ("resnet", 0, None, None)


def test_unknown_model_suggests_close_match() -> None:
    with pytest.raises(UserError, match="vgg16_att2_concat_pc"):
        create_model("vgg16_att2_concat_cp")
    with pytest.raises(UserError, match="unknown model 'vgg17'.*'vgg16'"):
        model_info("vgg17")


def test_bad_arguments_are_user_errors() -> None:
    with pytest.raises(UserError, match="width"):
        create_model("vgg16", width=0)
    with pytest.raises(UserError, match="num_classes"):
        create_model("vgg16", num_classes=0)
    with pytest.raises(UserError, match="std"):
        create_model("vgg16", width=TINY, std=(0.2, 0.0, 0.2))


def test_registry_kwargs_and_rebuild() -> None:
    model = create_model(
        "vgg16_att2_concat_pc", num_classes=7, width=TINY, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
    )
    assert model.registry_name == "vgg16_att2_concat_pc"
    assert model.registry_kwargs == {"num_classes": 7, "width": TINY, "mean": [0.5] * 3, "std": [0.25] * 3}
    kwargs = json.loads(json.dumps(model.registry_kwargs))
    again = create_model(model.registry_name, **kwargs)
    again.load_state_dict(model.state_dict())  # same architecture, strict
    state = model.state_dict()
    assert torch.equal(state["mean"], torch.full((1, 3, 1, 1), 0.5))
    assert torch.equal(state["std"], torch.full((1, 3, 1, 1), 0.25))


def test_user_registered_model() -> None:
    name = "test_models_user_mlp"

    @register_model(name=name)
    def build(num_classes: int = 10, width: float = 1.0) -> nn.Module:  # no mean/std: gets wrapped
        hidden = scale_channels(32, width)
        return nn.Sequential(
            nn.Flatten(), nn.Linear(3 * 8 * 8, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    try:
        assert name in list_models("test_models_*")
        assert model_info(name).family == "custom"
        plain = create_model(name, num_classes=4, width=0.5)
        assert plain.registry_name == name and not isinstance(plain, ImageClassifier)
        assert plain(torch.rand(2, 3, 8, 8)).shape == (2, 4)
        wrapped = create_model(name, num_classes=4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        assert isinstance(wrapped, NormalizedModel) and not wrapped.has_attention
        img = torch.rand(2, 3, 8, 8)
        logits, maps = wrapped(img, return_attention=True)
        assert maps == [] and torch.allclose(logits, wrapped.net((img - 0.5) / 0.5))
        with pytest.raises(UserError, match="does not accept the argument 'depth'"):
            create_model(name, depth=3)

        # re-registering the same builder (a reloaded module) is fine; a different one is refused
        register_model(build, name=name)

        def other(num_classes: int = 10, width: float = 1.0) -> nn.Module:
            return nn.Linear(1, num_classes)

        with pytest.raises(UserError, match="already registered"):
            register_model(other, name=name)
        with pytest.raises(UserError, match="already registered"):
            register_model(other, name="vgg16")
    finally:
        reg._REGISTRY.pop(name, None)
    assert name not in list_models()


# ------------------------------------------------------------------------------ every model runs
@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_forward(name: str, x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, width=TINY).eval()
    n = _batch(name)
    with torch.no_grad():
        logits = model(x[:n])
        again, maps = model(x[:n], return_attention=True)
    assert isinstance(logits, torch.Tensor) and logits.shape == (n, 10)
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, again)  # eval mode is deterministic
    assert model.has_attention == (model_info(name).attention_levels > 0)
    assert [tuple(m.shape) for m in maps] == [(n, s, s) for s in _expected_sizes(name)]
    for m in maps:
        assert (m >= 0).all()
        torch.testing.assert_close(m.sum(dim=(1, 2)), torch.ones(n), atol=1e-5, rtol=0)
    assert "mean" in model.state_dict() and "std" in model.state_dict()


@pytest.mark.parametrize(
    "name", ["vgg16", "vgg16_att3_concat_pc", "resnet18_att2_indep_pc", "resnet164_att3_concat_pc"]
)
def test_gradients_reach_input(name: str, x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, width=TINY).train()
    n = 2  # train-mode BN needs more than one value per channel
    xi = x[:n].clone().requires_grad_(True)
    logits, maps = model(xi, return_attention=True)
    loss = F.cross_entropy(logits, torch.tensor([1, 2][:n])) + sum(m.pow(2).sum() for m in maps)
    loss.backward()
    assert xi.grad is not None and torch.isfinite(xi.grad).all() and xi.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_num_classes_respected(x: torch.Tensor) -> None:
    for name in ("vgg16", "vgg16_att1_indep_dp", "resnet18_att2_concat_pc"):
        model = create_model(name, num_classes=100, width=TINY).eval()
        assert model(x).shape == (2, 100)
        assert model.num_classes == 100


def test_width_scales_channels() -> None:
    with torch.device("meta"):  # no allocation: the CLI counts parameters this way
        full = create_model("vgg16_att3_concat_pc", width=1.0)
        half = create_model("vgg16_att3_concat_pc", width=0.5)
        r164 = create_model("resnet164", width=1.0)
        r18 = create_model("resnet18", width=1.0)
    assert parameter_count(half) < parameter_count(full) / 3
    assert 1.6e6 < parameter_count(r164) < 1.8e6  # ResNet-164 is 1.7M parameters
    assert 11.0e6 < parameter_count(r18) < 11.3e6  # CIFAR ResNet-18 is 11.2M parameters
    assert full.attention.projectors[0].op.weight.shape == (512, 256, 1, 1)  # conv7 up-projection
    assert scale_channels(64, 0.0625) == 4 and scale_channels(64, 0.01) == 4


def test_channels_last_and_autocast(x: torch.Tensor) -> None:
    model = create_model("vgg16_att3_concat_pc", width=TINY).eval()
    with torch.no_grad():
        ref, ref_maps = model(x, return_attention=True)
        cl = model.to(memory_format=torch.channels_last)
        out, maps = cl(x.contiguous(memory_format=torch.channels_last), return_attention=True)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, low_maps = cl(x, return_attention=True)
    assert torch.isfinite(low.float()).all() and low.shape == ref.shape
    for m in low_maps:
        torch.testing.assert_close(m.float().sum(dim=(1, 2)), torch.ones(2), atol=2e-2, rtol=0)


def test_torchattacks_accepts_models(x: torch.Tensor) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model = create_model("vgg16_att2_concat_dp", width=TINY).eval()
    y = torch.tensor([3, 4])
    adv = torchattacks.FGSM(model, eps=8 / 255)(x, y)
    assert adv.shape == x.shape and (adv - x).abs().max() <= 8 / 255 + 1e-6


# ------------------------------------------------------------------------- attention maths by hand
def _hand_attention(l: torch.Tensor, g: torch.Tensor, u: torch.Tensor | None):
    n, c, h, w = l.shape
    if u is None:  # dp: c_i = <l_i, g>
        scores = torch.einsum("nchw,nc->nhw", l, g)
    else:  # pc: c_i = <u, l_i + g>
        scores = torch.einsum("nchw,c->nhw", l + g[:, :, None, None], u)
    a = torch.softmax(scores.reshape(n, -1), dim=1).reshape(n, h, w)
    return torch.einsum("nchw,nhw->nc", l, a), a


@pytest.mark.parametrize("compat", ["dp", "pc"])
def test_attention_block_by_hand(compat: str) -> None:
    gen = torch.Generator().manual_seed(1)
    l, g = torch.randn(2, 4, 3, 5, generator=gen), torch.randn(2, 4, generator=gen)
    block = AttentionBlock(4, compat)
    u = None if compat == "dp" else block.u.weight.detach().flatten()
    assert (block.u is None) == (compat == "dp")
    g_a, a = block(l, g)
    exp_g_a, exp_a = _hand_attention(l, g, u)
    torch.testing.assert_close(a, exp_a)
    torch.testing.assert_close(g_a, exp_g_a)
    # a tiny example checked with plain numbers: dp on one channel, positions with l = 0 and l = 1
    if compat == "dp":
        l1 = torch.tensor([[[[0.0, 1.0]]]])
        g_a1, a1 = block.__class__(1, "dp")(l1, torch.tensor([[2.0]]))
        e = torch.exp(torch.tensor(2.0))
        torch.testing.assert_close(a1, torch.tensor([[[1 / (1 + e), e / (1 + e)]]]))
        torch.testing.assert_close(g_a1, torch.tensor([[e / (1 + e)]]))


def test_heads_by_hand() -> None:
    gen = torch.Generator().manual_seed(2)
    vecs = [torch.randn(3, 4, generator=gen), torch.randn(3, 6, generator=gen)]
    concat = AttentionHead([4, 6], num_classes=5, mode="concat")
    cat = torch.cat(vecs, dim=1)
    torch.testing.assert_close(concat(vecs), cat @ concat.classify.weight.T + concat.classify.bias)
    indep = AttentionHead([4, 6], num_classes=5, mode="indep")
    per_level = [
        F.log_softmax(v @ c.weight.T + c.bias, dim=1) for v, c in zip(vecs, indep.classifiers, strict=True)
    ]
    torch.testing.assert_close(indep(vecs), (per_level[0] + per_level[1]) / 2)
    with pytest.raises(UserError, match="unknown attention head"):
        AttentionHead([4], 5, mode="sum")
    with pytest.raises(UserError, match="unknown attention compatibility"):
        AttentionBlock(4, "cos")


@pytest.mark.parametrize(
    "name",
    ["vgg16_att3_concat_pc", "vgg16_att2_indep_dp", "resnet164_att3_concat_pc", "resnet18_att2_concat_dp"],
)
def test_full_model_wiring_by_hand(name: str, x: torch.Tensor) -> None:
    """Recompute the logits from the captured local/global features with plain torch ops."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=6, width=TINY).eval()
    n = _batch(name)
    captured: dict[str, object] = {}
    handle = model.attention.register_forward_hook(
        lambda mod, args, out: captured.update(locals_=args[0], g=args[1])
    )
    with torch.no_grad():
        logits, maps = model(x[:n], return_attention=True)
    handle.remove()
    att: LocalAttention = model.attention
    info = model_info(name)
    locals_, g = captured["locals_"], captured["g"]
    assert g.shape == (n, model.attention.blocks[0].channels)
    attended = []
    for i, l in enumerate(locals_):
        proj = att.projectors[i]
        if isinstance(proj, nn.Identity):
            lp = l
        else:  # 1x1 up-projection, no bias
            lp = torch.einsum("nchw,oc->nohw", l, proj.op.weight[:, :, 0, 0])
        assert lp.shape[1] == g.shape[1]
        u = None if info.compatibility == "dp" else att.blocks[i].u.weight.flatten()
        g_a, a = _hand_attention(lp, g, u)
        torch.testing.assert_close(maps[i], a, atol=1e-5, rtol=1e-4)
        attended.append(g_a)
    if info.head == "concat":
        w, b = att.head.classify.weight, att.head.classify.bias
        expected = torch.cat(attended, 1) @ w.T + b
    else:
        expected = torch.stack(
            [
                F.log_softmax(v @ c.weight.T + c.bias, 1)
                for v, c in zip(attended, att.head.classifiers, strict=True)
            ]
        ).mean(0)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_normalisation_inside_model(x: torch.Tensor) -> None:
    model = create_model("resnet18", width=TINY, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7)).eval()
    z = model.normalize(x)
    torch.testing.assert_close(
        z,
        (x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.6, 0.7]).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_normalized(z)[0])
    assert model.mean.shape == (1, 3, 1, 1) and "mean" in dict(model.named_buffers())
    with pytest.raises(ValueError, match="expects a"):
        model(torch.rand(2, 1, 32, 32))


def test_other_input_sizes() -> None:
    model = create_model("vgg16_att3_concat_pc", width=TINY).eval()
    with torch.no_grad():
        for size in (24, 48):
            logits, maps = model(torch.rand(1, 3, size, size), return_attention=True)
            assert logits.shape == (1, 10)
            assert maps[0].shape == (1, size, size)


def test_pc_attention_not_saturated_at_init(x: torch.Tensor) -> None:
    """Xavier-initialised u (official code) starts with spread-out maps, not a one-hot softmax."""
    torch.manual_seed(0)
    model = create_model("vgg16_att3_concat_pc", width=0.125).train()  # train mode: BN normalises
    with torch.no_grad():
        _, maps = model(x, return_attention=True)
    for m in maps:
        assert m.flatten(1).max(dim=1).values.max() < 0.5
