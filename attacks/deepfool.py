"""DeepFool: the minimal L2 perturbation found by iterated linearisation (batched)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from robustbench_lta.plugins import Attack, AttackKind, AttackParams, ThreatModel, register_attack


@register_attack
class DeepFool(Attack):
    r"""DeepFool (L2): step to the nearest linearised decision boundary until the label flips.

    'DeepFool: a simple and accurate method to fool deep neural networks'
    [https://arxiv.org/abs/1511.04599]

    Distance Measure : L2 (minimal perturbation; ``bounded = False``, eps is ignored)

    Same update as ``torchattacks.DeepFool`` (``x <- clamp(x + (1 + overshoot) * r, 0, 1)`` with
    ``r = |f_l - f_y| (w_l - w_y) / ||w_l - w_y||^2`` for the closest class l), but batched: one
    backward pass per class per step for all still-correct samples, instead of torchattacks'
    per-sample Python loop (torchattacks returns the adversarials only from ``forward``; its
    ``forward_return_target_labels`` also gives the target classes). Samples the model already
    misclassifies are returned unchanged; samples not fooled within ``steps`` return their last
    iterate.

    Arguments:
        steps (int): maximum number of linearisation steps. (Default: 50)
        overshoot (float): step past the boundary by this factor. (Default: 0.02)

    Shape:
        - x: :math:`(N, C, H, W)` floats in [0, 1]; y: :math:`(N)` int64.
        - output: :math:`(N, C, H, W)` in [0, 1].
    """

    name = "deepfool"
    threat_model = ThreatModel.L2
    kind = AttackKind.WHITE_BOX
    bounded = False
    iterative = True

    class Params(AttackParams):
        steps: int = Field(50, ge=1, description="maximum linearisation steps")
        overshoot: float = Field(0.02, ge=0, description="relative overshoot past the boundary")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        steps, overshoot = int(self.params["steps"]), float(self.params["overshoot"])
        x_adv = x.detach().clone()
        active = torch.arange(x.shape[0], device=x.device)
        for _ in range(steps):
            if active.numel() == 0:
                break
            xi = x_adv[active].clone().requires_grad_(True)
            yi = y[active]
            with torch.enable_grad():
                logits = model(xi)
                still = logits.argmax(dim=1) == yi
                if not bool(still.any()):
                    break
                n_classes = logits.shape[1]
                # Jacobian rows: one batched backward pass per class.
                jac = torch.stack(
                    [
                        torch.autograd.grad(logits[:, k].sum(), xi, retain_graph=k + 1 < n_classes)[0]
                        for k in range(n_classes)
                    ],
                    dim=1,
                )  # (n, K, C, H, W)
            logits = logits.detach()
            rows = torch.arange(len(yi), device=x.device)
            f_diff = logits - logits[rows, yi].unsqueeze(1)  # (n, K)
            w_diff = jac - jac[rows, yi].unsqueeze(1)  # (n, K, C, H, W)
            w_norm = w_diff.flatten(2).norm(dim=2)  # (n, K)
            ratio = f_diff.abs() / w_norm
            ratio[rows, yi] = float("inf")
            ratio = torch.nan_to_num(ratio, nan=float("inf"))
            target = ratio.argmin(dim=1)
            w_t = w_diff[rows, target]
            scale = f_diff[rows, target].abs() / w_norm[rows, target].clamp_min(1e-12).pow(2)
            step = scale.view(-1, *([1] * (x.dim() - 1))) * w_t
            updated = (xi.detach() + (1 + overshoot) * step).clamp(0.0, 1.0)
            idx = active[still]
            x_adv[idx] = updated[still]
            active = idx
        return x_adv
