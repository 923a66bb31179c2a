"""The built-in attacks and the adapters on a tiny CNN trained in a second on a synthetic task."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lta.errors import UserError
from robustbench_lta.plugins import (
    get_attack,
    get_attack_class,
    list_attacks,
    perturbation_norms,
    verify_batch,
)

N_CLASSES = 4
SIZE = 8


def _synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images with one brighter quadrant; the quadrant is the label."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, N_CLASSES, (n,), generator=gen)
    x = 0.4 + 0.1 * torch.rand(n, 3, SIZE, SIZE, generator=gen)
    half = SIZE // 2
    for k in range(N_CLASSES):
        r, c = divmod(k, 2)
        sel = y == k
        x[sel, :, r * half : (r + 1) * half, c * half : (c + 1) * half] += 0.25
    return x.clamp(0, 1), y


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8 * 4 * 4, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv2(F.relu(self.conv1(x)))).flatten(1))


@pytest.fixture(scope="module")
def tiny() -> Iterator[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """(model in eval mode, 64 test images, labels); the model is ~100% accurate on clean data.

    Runs single-threaded (restored afterwards): on a small shared CPU, thread contention makes
    these tiny ops ~50x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyCNN()
    x_train, y_train = _synthetic(512, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(12):
        for i in range(0, 512, 64):
            opt.zero_grad()
            F.cross_entropy(model(x_train[i : i + 64]), y_train[i : i + 64]).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    x, y = _synthetic(64, seed=2)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.95, f"tiny model did not learn the synthetic task (acc {acc})"
    yield model, x, y
    torch.set_num_threads(threads)


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# eps chosen so every attack breaks a clear majority of the tiny model (linf on [0,1]; l2 on 3x8x8)
FAST_PARAMS = {
    "fgsm": {},
    "fgm-l2": {},
    "pgd-linf": {"steps": 5},
    "pgd-l2": {"steps": 5},
    "mifgsm": {"steps": 5},
    "apgd-ce": {"steps": 5},
    "autoattack": {},
    "autoattack-l2": {},
    "square": {"n_queries": 100},
    "cw-l2": {"steps": 30, "lr": 0.05, "c": 10.0},
    "deepfool": {"steps": 20},
    "boundary": {"steps": 50},
    "gaussian-noise": {},
}
EPS = {"linf": 0.2, "l2": 3.0}


def test_at_least_ten_builtins() -> None:
    builtins = {a.name for a in list_attacks() if a.source == "builtin"}
    assert set(FAST_PARAMS) <= builtins
    assert len(builtins) >= 10


@pytest.mark.parametrize("name", sorted(FAST_PARAMS))
def test_builtin_respects_budget_and_lowers_accuracy(name: str, tiny) -> None:
    model, x, y = tiny
    attack = get_attack(name, seed=3, **FAST_PARAMS[name])
    eps = EPS[attack.threat_model.value]
    params_before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():  # attacks must turn gradients on themselves where they need them
        x_adv = attack(model, x, y, eps)
    check = verify_batch(x, x_adv, eps, attack.threat_model, attack.bounded)
    assert check.ok, check.reason
    assert x_adv.dtype == x.dtype and x_adv.device == x.device
    clean, adv = _acc(model, x, y), _acc(model, x_adv, y)
    if attack.kind.value == "random":
        assert adv <= clean  # noise may or may not hurt; it never needs to
    else:
        assert adv < clean - 0.3, f"{name}: accuracy {clean:.2f} -> {adv:.2f}"
    # the model is left as it was: eval mode, same weights, gradients still enabled, no .grad left
    assert not model.training
    for p, before in zip(model.parameters(), params_before, strict=True):
        assert p.requires_grad and p.grad is None and torch.equal(p, before)


def test_randomized_attacks_are_reproducible(tiny) -> None:
    model, x, y = tiny
    state = torch.get_rng_state()
    for name in ("pgd-linf", "square", "gaussian-noise"):
        a = get_attack(name, seed=7, **FAST_PARAMS[name])(model, x, y, 0.1)
        b = get_attack(name, seed=7, **FAST_PARAMS[name])(model, x, y, 0.1)
        assert torch.equal(a, b), name
    assert torch.equal(state, torch.get_rng_state())  # the caller's global RNG is untouched


@pytest.mark.parametrize("eps", [0.02, 0.05, 0.1, 0.2])
def test_fgsm_matches_torchattacks_and_foolbox(eps: float, tiny) -> None:
    import foolbox
    import torchattacks

    model, x, y = tiny
    ours = get_attack("fgsm")(model, x, y, eps)
    ta = torchattacks.FGSM(model, eps=eps)(x, y)
    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1))
    _, fb_adv, _ = foolbox.attacks.LinfFastGradientAttack()(fmodel, x, y, epsilons=eps)
    with torch.no_grad():
        p_ours, p_ta, p_fb = (model(t).argmax(1) for t in (ours, ta, fb_adv))
    assert torch.equal(p_ours, p_ta)
    assert torch.equal(p_ours, p_fb)
    assert torch.allclose(ours, ta, atol=1e-6)


def test_fgsm_multi_eps_equals_single_calls(tiny) -> None:
    model, x, y = tiny
    attack = get_attack("fgsm")
    many = attack.perturb_many(model, x, y, [0.01, 0.03])
    assert torch.equal(many[1], attack(model, x, y, 0.03))


def test_deepfool_matches_torchattacks(tiny) -> None:
    import torchattacks

    model, x, y = tiny
    ours = get_attack("deepfool", steps=10)(model, x[:16], y[:16], float("inf"))
    theirs = torchattacks.DeepFool(model, steps=10)(x[:16], y[:16])
    assert torch.allclose(ours, theirs, atol=1e-4)
    for p in model.parameters():  # torchattacks' DeepFool leaves gradients on the weights
        p.grad = None


def test_iterative_never_weaker_than_fgsm(tiny) -> None:
    model, x, y = tiny
    fgsm_fooled = _acc(model, get_attack("fgsm")(model, x, y, 0.1), y)
    pgd_fooled = _acc(model, get_attack("pgd-linf", steps=10, restarts=2)(model, x, y, 0.1), y)
    assert pgd_fooled <= fgsm_fooled


def test_pgd_margin_loss_equals_a_hand_loop(tiny) -> None:
    """pgd-linf loss=margin: signed ascent on max_{j!=y} z_j - z_y (PGD-CW), checked step by step."""
    model, x, y = tiny
    x, y, eps, alpha = x[:8], y[:8], 0.05, 0.02
    ours = get_attack("pgd-linf", steps=3, alpha=alpha, random_start=False, keep="last",
                      loss="margin")(model, x, y, eps)
    x_adv = x.clone()
    for _ in range(3):
        x_in = x_adv.clone().requires_grad_(True)
        z = model(x_in)
        true = z.gather(1, y[:, None]).squeeze(1)
        other = z.masked_fill(torch.nn.functional.one_hot(y, z.shape[1]).bool(), -float("inf")).amax(1)
        (grad,) = torch.autograd.grad((other - true).sum(), x_in)
        x_adv = torch.min(torch.max(x_adv + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1).detach()
    assert torch.allclose(ours, x_adv, atol=1e-6)
    ce = get_attack("pgd-linf", steps=3, alpha=alpha, random_start=False, keep="last")(model, x, y, eps)
    assert not torch.equal(ce, ours)  # a different objective, not the default in disguise
    l2 = get_attack("pgd-l2", steps=3, loss="margin")(model, x, y, 0.5)
    assert float(perturbation_norms(x, l2, "l2").max()) <= 0.5 + 1e-6


def test_pgd_l2_ball_and_zero_eps(tiny) -> None:
    model, x, y = tiny
    x_adv = get_attack("pgd-l2", steps=5)(model, x, y, 0.5)
    assert float(perturbation_norms(x, x_adv, "l2").max()) <= 0.5 + 1e-6
    assert torch.equal(get_attack("pgd-linf")(model, x, y, 0.0), x)


def test_torchattacks_adapter(tiny) -> None:
    model, x, y = tiny
    attack = get_attack("ta:PGD", steps=5)
    assert attack.threat_model.value == "linf" and attack.bounded and attack.iterative
    with torch.no_grad():
        x_adv = attack(model, x, y, 0.2)
    assert verify_batch(x, x_adv, 0.2, "linf", True).ok
    assert _acc(model, x_adv, y) < _acc(model, x, y)
    assert get_attack_class("ta:PGDL2").threat_model.value == "l2"
    assert get_attack_class("ta:APGD", {"norm": "L2"}).threat_model.value == "l2"
    assert get_attack_class("ta:APGD", {"threat_model": "l2"}).threat_model.value == "l2"
    cw = get_attack_class("ta:CW")
    assert cw.bounded is False and cw.threat_model.value == "l2"
    assert get_attack_class("ta:DeepFool").bounded is False
    # n_classes inferred from the model (the library default 10 would be wrong here)
    x_adv = get_attack("ta:APGDT", steps=3)(model, x[:8], y[:8], 0.2)
    assert verify_batch(x[:8], x_adv, 0.2, "linf", True).ok
    with pytest.raises(UserError, match="unknown parameter"):
        get_attack("ta:PGD", stepz=3)
    with pytest.raises(UserError, match="PGD"):
        get_attack("ta:PDG")


def test_foolbox_adapter(tiny) -> None:
    model, x, y = tiny
    attack = get_attack("fb:LinfPGD", steps=5)
    assert attack.threat_model.value == "linf" and attack.bounded and attack.multi_eps
    with torch.no_grad():
        outs = attack.perturb_many(model, x, y, [0.05, 0.2])
    assert len(outs) == 2
    for eps, x_adv in zip([0.05, 0.2], outs, strict=True):
        assert verify_batch(x, x_adv, eps, "linf", True).ok
    assert _acc(model, outs[1], y) < _acc(model, x, y)
    l2 = get_attack("fb:L2DeepFoolAttack", steps=10)
    assert l2.bounded is False and l2.threat_model.value == "l2"
    x_adv = l2(model, x, y, float("inf"))
    assert verify_batch(x, x_adv, float("inf"), "l2", False).ok
    with pytest.raises(UserError, match="L1"):
        get_attack_class("fb:L1PGD")
    with pytest.raises(UserError, match="unknown parameter"):
        get_attack("fb:LinfPGD", stepz=1)
