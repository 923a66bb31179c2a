"""Boundary Attack (decision-based, L2) via foolbox 3."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from robustbench_lta.plugins import Attack, AttackKind, AttackParams, ThreatModel, register_attack


@register_attack
class Boundary(Attack):
    r"""Boundary Attack: random walk along the decision boundary towards the clean image.

    'Decision-Based Adversarial Attacks: Reliable Attacks Against Black-Box Machine Learning
    Models' [https://arxiv.org/abs/1712.04248]

    Distance Measure : L2 (minimal perturbation; ``bounded = False``, eps is ignored). Uses only
    predicted labels (``kind = black-box-decision``).

    Runs ``foolbox.attacks.BoundaryAttack`` on ``foolbox.PyTorchModel(model, bounds=(0, 1))``.
    foolbox's own initialisation (blended uniform noise) raises for the whole batch when any
    sample gets no adversarial start, which is common on small or confident models; so the
    starting points are found here instead: for each sample the closest misclassified candidate
    among ``init_noise`` uniform-noise images and the other images of the batch, pulled towards
    the clean image by a batched binary search to the decision boundary. Samples without any
    candidate, and samples already misclassified, are returned unchanged. Seeded through torch's
    global RNG (forked and restored around the call).

    Arguments:
        steps (int): boundary-walk steps. foolbox's default is 25000; the walk adapts its step
            sizes slowly (on a tiny CNN the median L2 barely moves in the first 1000 steps and
            drops ~30% by 3000), so fewer than a few thousand steps overestimate the distance
            to the boundary. (Default: 5000)
        spherical_step (float): initial orthogonal step size. (Default: 0.01)
        source_step (float): initial step size towards the original. (Default: 0.01)
        step_adaptation (float): step-size adaptation factor. (Default: 1.5)
        init_noise (int): uniform-noise candidates per batch for the start. (Default: 20)
        search_steps (int): binary-search steps towards the boundary for the start. (Default: 20)

    Shape:
        - x: :math:`(N, C, H, W)` floats in [0, 1]; y: :math:`(N)` int64.
        - output: :math:`(N, C, H, W)` in [0, 1].
    """

    name = "boundary"
    threat_model = ThreatModel.L2
    kind = AttackKind.DECISION
    bounded = False
    iterative = True
    randomized = True

    class Params(AttackParams):
        steps: int = Field(5000, ge=1, description="boundary-walk steps")
        spherical_step: float = Field(0.01, gt=0, description="initial orthogonal step size")
        source_step: float = Field(0.01, gt=0, description="initial step size towards the original")
        step_adaptation: float = Field(1.5, gt=1, description="step-size adaptation factor")
        init_noise: int = Field(20, ge=0, description="uniform-noise candidates per batch for the start")
        search_steps: int = Field(20, ge=1, description="binary-search steps towards the boundary")

    @torch.no_grad()
    def _starting_points(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(starts, found): the nearest misclassified candidate per sample, moved to the boundary."""
        n = x.shape[0]
        gen = self.generator(x.device)
        noise = torch.rand(
            (int(self.params["init_noise"]),) + tuple(x.shape[1:]),
            generator=gen,
            device=x.device,
            dtype=x.dtype,
        )
        candidates = torch.cat([x, noise])  # (n + r, C, H, W)
        cand_pred = model(candidates).argmax(dim=1)
        dist = torch.cdist(x.flatten(1), candidates.flatten(1))  # (n, n + r)
        usable = cand_pred.unsqueeze(0) != y.unsqueeze(1)
        usable[torch.arange(n), torch.arange(n)] = False
        dist = torch.where(usable, dist, torch.full_like(dist, float("inf")))
        best = dist.argmin(dim=1)
        found = torch.isfinite(dist[torch.arange(n), best])
        starts = candidates[best]
        # Binary search on the blend x + t (start - x): lo not adversarial, hi adversarial.
        view = (-1,) + (1,) * (x.dim() - 1)
        lo = torch.zeros(n, device=x.device, dtype=x.dtype)
        hi = torch.ones(n, device=x.device, dtype=x.dtype)
        for _ in range(int(self.params["search_steps"])):
            mid = (lo + hi) / 2
            adv = model(x + mid.view(view) * (starts - x)).argmax(dim=1) != y
            hi = torch.where(adv, mid, hi)
            lo = torch.where(adv, lo, mid)
        return (x + hi.view(view) * (starts - x)).clamp(0.0, 1.0), found

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        import foolbox

        p = self.params
        x = x.detach()
        out = x.clone()
        with torch.no_grad():
            correct = model(x).argmax(dim=1) == y
        idx = correct.nonzero().flatten()
        if idx.numel() == 0:
            return out
        with self.frozen(model), self.global_rng(x.device):
            starts, found = self._starting_points(model, x[idx], y[idx])
            idx, starts = idx[found], starts[found]
            if idx.numel() == 0:
                return out
            fmodel = foolbox.PyTorchModel(model, bounds=(0, 1), device=x.device)
            attack = foolbox.attacks.BoundaryAttack(
                steps=int(p["steps"]),
                spherical_step=float(p["spherical_step"]),
                source_step=float(p["source_step"]),
                step_adaptation=float(p["step_adaptation"]),
            )
            raw, _, _ = attack(fmodel, x[idx], y[idx], epsilons=None, starting_points=starts)
        out[idx] = raw.detach().to(x.dtype).clamp(0.0, 1.0)
        return out
