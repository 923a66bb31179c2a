"""PGD-attn-JS: PGD on cross-entropy plus a term that drives the attention away from its clean maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lta.plugins import Attack, AttackKind, ThreatModel, attention_of, register_attack


def js_bits(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in bits (in [0,1]) per row between maps (N,...) summing to 1."""
    p, q = p.flatten(1).float(), q.flatten(1).float()
    m = 0.5 * (p + q)
    ent = lambda t: torch.special.xlogy(t, t).sum(dim=1)  # noqa: E731 - sum t ln t, 0 ln 0 = 0
    return (0.5 * (ent(p) + ent(q)) - ent(m)) / 0.6931471805599453


@register_attack
class PGDAttnJS(Attack):
    r"""PGD + attention divergence (Linf): restarts on CE, then on CE + w * JS(clean maps, adversarial maps).

    An adaptive attack for attention models: besides the cross-entropy it pushes every attention level
    away from where its mass was on the clean image (Jensen-Shannon divergence in bits, in [0,1],
    averaged over levels), since moving the attention can reach features that a plain gradient
    attack does not follow through the softmax. White-box; needs ``model(x, return_attention=True)``:
    on a model without attention maps the cell fails with a one-line message.

    Distance Measure : Linf

    One restart per entry of ``js_weights``, in order; each attacks only the samples no earlier
    restart fooled. The default ``[0, 1]`` starts with a plain CE restart, which is exactly
    ``pgd-linf`` with the same seed, steps and step size, so per sample this attack breaks every
    image that ``pgd-linf`` (one restart) breaks, and possibly more: it is never weaker than PGD of
    the same steps, at up to twice its cost. A restart starts at a uniform random point of the
    eps-ball (seeded) and takes ``steps`` signed steps of size ``alpha``, projected onto the ball and
    [0,1]. Per sample the result is the first iterate that fools the model, else the iterate with
    the highest objective.

    Arguments:
        steps (int): gradient steps per restart. (Default: 10)
        alpha (float or None): step size; None means ``2.5 * eps / steps``. (Default: None)
        js_weights (list of float): weight of the JS term in each restart. (Default: [0, 1])
        random_start (bool): start at a random point of the ball instead of x. (Default: True)

    Shape:
        - x: :math:`(N, C, H, W)` floats in [0, 1]; y: :math:`(N)` int64.
        - output: :math:`(N, C, H, W)` in [0, 1], ``|x_adv - x|_inf <= eps``.
    """

    name = "pgd-attn-js"
    threat_model = ThreatModel.LINF
    kind = AttackKind.WHITE_BOX
    iterative = True
    randomized = True
    defaults = {"steps": 10, "alpha": None, "js_weights": [0.0, 1.0], "random_start": True}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        eps = float(eps)
        x = x.detach()
        with torch.no_grad():
            _, clean_maps = attention_of(model, x, self.name)  # also the check for attention
        if eps <= 0:
            return x.clone()
        steps = int(self.params["steps"])
        alpha = float(self.params["alpha"]) if self.params["alpha"] is not None else 2.5 * eps / max(steps, 1)
        weights = self.params["js_weights"]
        if isinstance(weights, int | float):
            weights = [weights]
        weights = [float(w) for w in weights]
        if not weights:
            raise ValueError("pgd-attn-js: js_weights needs at least one weight (one per restart)")
        gen = self.generator(x.device)
        clean_maps = [m.detach().float() for m in clean_maps]

        def objective(idx: torch.Tensor, x_adv: torch.Tensor, weight: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
            if weight == 0:  # the plain CE restart: exactly pgd-linf's forward and loss
                logits = model(x_adv).float()
                return F.cross_entropy(logits, y[idx], reduction="none"), logits
            logits, maps = attention_of(model, x_adv, self.name)
            logits = logits.float()
            ce = F.cross_entropy(logits, y[idx], reduction="none")
            js = torch.stack([js_bits(c[idx], m) for c, m in zip(clean_maps, maps, strict=True)]).mean(0)
            return ce + weight * js, logits

        # for a sample no restart fools, the iterate kept is the one with the highest objective of
        # any restart (CE or CE + w * JS): either way it is not adversarial
        best = x.clone()
        best_obj = torch.full((x.shape[0],), -float("inf"), device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

        def record(idx: torch.Tensor, x_adv: torch.Tensor, obj: torch.Tensor, logits: torch.Tensor
                   ) -> torch.Tensor:
            hit = logits.argmax(1) != y[idx]
            take = ~fooled[idx] & (hit | (obj > best_obj[idx]))
            best[idx[take]] = x_adv[take].detach()
            best_obj[idx[take]] = obj[take].detach()
            fooled[idx[hit]] = True
            return hit

        for weight in weights:
            # drawn for the whole batch: a sample's start does not depend on which others remain
            noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            idx = torch.nonzero(~fooled).squeeze(1)
            if idx.numel() == 0:
                break
            x0 = x[idx]
            x_adv = ((x0 + (2 * noise[idx] - 1) * eps).clamp(0, 1) if self.params["random_start"]
                     else x0.clone())
            for _ in range(steps):
                x_in = x_adv.clone().requires_grad_(True)
                with torch.enable_grad():
                    obj, logits = objective(idx, x_in, weight)
                    (grad,) = torch.autograd.grad(obj.sum(), x_in)
                alive = ~record(idx, x_adv, obj, logits.detach())
                if not bool(alive.any()):
                    idx = idx[:0]
                    break
                idx, x0, x_adv, grad = idx[alive], x0[alive], x_adv[alive], grad[alive]
                x_adv = x_adv + alpha * grad.sign()
                x_adv = torch.max(torch.min(x_adv, x0 + eps), x0 - eps).clamp(0, 1).detach()
            if idx.numel():
                with torch.no_grad():
                    obj, logits = objective(idx, x_adv, weight)
                record(idx, x_adv, obj, logits)
            if bool(fooled.all()):
                break
        return best
