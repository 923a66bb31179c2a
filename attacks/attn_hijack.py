"""Attention hijack: move the attention off where it was while keeping the predicted label."""

from __future__ import annotations

import torch
from torch import nn

from robustbench_lta.plugins import Attack, AttackKind, ThreatModel, attention_of, register_attack


def mass_region(maps: torch.Tensor, mass: float) -> torch.Tensor:
    """Per map (N,h,w), the smallest set of cells holding ``mass`` of its total, as a 0/1 float mask."""
    flat = maps.flatten(1).float()
    order = flat.argsort(dim=1, descending=True)
    sorted_ = flat.gather(1, order)
    before = sorted_.cumsum(1) - sorted_  # mass of the cells ranked above each cell
    keep_sorted = (before < mass * flat.sum(1, keepdim=True)).float()
    mask = torch.zeros_like(flat).scatter(1, order, keep_sorted)
    return mask.view_as(maps)


@register_attack
class AttnHijack(Attack):
    r"""Attention hijack (Linf): push attention mass out of its clean region, keep the label.

    Asks whether the attention can be moved without changing the prediction, i.e. whether the
    maps the paper reads as "where the model looks" can be steered by an imperceptible perturbation
    while the answer stays the same. For every attention level, the clean map's own region R is the
    smallest set of cells holding ``region_mass`` of its mass (plugins are not given object boxes;
    on cluttered-digits the sweep's attention table measures box mass of the result). Ascent on

        J(x') = mean over levels of (mass of the map of x' outside R)
                - margin_weight * relu(margin_floor - margin_y(x'))

    where ``margin_y`` is the logit of the label minus the largest other logit: the penalty only acts
    when the label is about to change. Per sample the result is the iterate with the highest
    hijacked mass among those that keep the predicted label equal to the clean prediction (the
    clean image if none does), so this attack by design leaves accuracy about where it is: its
    robust accuracy is not a robustness figure; its output is the attention drift and box mass of
    the sweep's attention table. White-box; needs ``model(x, return_attention=True)``.

    Distance Measure : Linf

    Arguments:
        steps (int): signed gradient steps. (Default: 20)
        alpha (float or None): step size; None means ``2.5 * eps / steps``. (Default: None)
        region_mass (float): share of the clean map's mass defining its region R. (Default: 0.5)
        margin_floor (float): logit margin below which the label-keeping penalty acts. (Default: 1.0)
        margin_weight (float): weight of that penalty. (Default: 1.0)

    Shape:
        - x: :math:`(N, C, H, W)` floats in [0, 1]; y: :math:`(N)` int64.
        - output: :math:`(N, C, H, W)` in [0, 1], ``|x_adv - x|_inf <= eps``.
    """

    name = "attn-hijack"
    threat_model = ThreatModel.LINF
    kind = AttackKind.WHITE_BOX
    iterative = True
    defaults = {"steps": 20, "alpha": None, "region_mass": 0.5, "margin_floor": 1.0, "margin_weight": 1.0}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        eps = float(eps)
        x = x.detach()
        with torch.no_grad():
            clean_logits, clean_maps = attention_of(model, x, self.name)
        if eps <= 0:
            return x.clone()
        steps = int(self.params["steps"])
        alpha = float(self.params["alpha"]) if self.params["alpha"] is not None else 2.5 * eps / max(steps, 1)
        share = float(self.params["region_mass"])
        if not 0 < share <= 1:
            raise ValueError(f"attn-hijack: region_mass must be in (0, 1], got {share}")
        floor, weight = float(self.params["margin_floor"]), float(self.params["margin_weight"])
        # keep the clean *prediction* (the engine attacks clean-correct samples, where it is y)
        keep = clean_logits.argmax(1)
        regions = [mass_region(m.detach(), share) for m in clean_maps]

        def evaluate(x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            logits, maps = attention_of(model, x_adv, self.name)
            logits = logits.float()
            inside = [(m.float() * r).flatten(1).sum(1) for m, r in zip(maps, regions, strict=True)]
            outside = 1 - torch.stack(inside).mean(0)
            own = logits.gather(1, keep[:, None])[:, 0]
            other = logits.scatter(1, keep[:, None], -float("inf")).max(1).values
            margin = own - other
            objective = outside - weight * torch.relu(floor - margin)
            return objective, outside, logits.argmax(1) == keep

        with torch.no_grad():
            _, best_out, _ = evaluate(x)
        best = x.clone()
        x_adv = x.clone()
        for _ in range(steps):
            x_in = x_adv.clone().requires_grad_(True)
            with torch.enable_grad():
                objective, outside, kept = evaluate(x_in)
                (grad,) = torch.autograd.grad(objective.sum(), x_in)
            take = kept & (outside.detach() > best_out)
            best[take], best_out[take] = x_adv[take], outside.detach()[take]
            x_adv = x_adv + alpha * grad.sign()
            x_adv = torch.max(torch.min(x_adv, x + eps), x - eps).clamp(0, 1).detach()
        with torch.no_grad():
            _, outside, kept = evaluate(x_adv)
        take = kept & (outside > best_out)
        best[take] = x_adv[take]
        return best
