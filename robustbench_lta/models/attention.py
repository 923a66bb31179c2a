"""Trainable attention of "Learn To Pay Attention" (Jetley et al., ICLR 2018).

For one attention level with local features ``l`` (N,C,H,W) and global feature ``g`` (N,C):

* compatibility ``dp`` (dot product, no parameters): ``c_i = <l_i, g>``;
* compatibility ``pc`` ("parametrised compatibility"): ``c_i = <u, l_i + g>`` with a learned vector
  ``u`` (a 1x1 convolution to one channel without bias, as in the official code's
  ``LinearAttentionBlock``);
* attention ``a = softmax(c)`` over ALL H*W spatial positions of the image;
* attended vector ``g_a = sum_i a_i l_i`` (N,C).

Local and global features must have the same dimension. Where they do not (VGG's conv7 has 256
channels, ``g`` has 512), the local features are first projected UP with a bias-free 1x1
convolution (:class:`ProjectorBlock`, the official code's ``ProjectorBlock``), and the attended
vector is formed from the projected features, as in the official code.

Heads (:class:`AttentionHead`):

* ``concat``: one linear classifier on the concatenation ``[g_a^1, ..., g_a^S]``;
* ``indep``: one linear classifier per level; the per-level log-probabilities (``log_softmax``)
  are averaged and returned as the logits (a valid logit vector: softmax of it is the normalised
  geometric mean of the per-level predictions).

Everything here is dtype-agnostic (works under ``torch.autocast``), uses no in-place operations and
accepts channels_last inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

COMPATIBILITIES = ("dp", "pc")
HEADS = ("concat", "indep")


class ProjectorBlock(nn.Module):
    """Bias-free 1x1 convolution mapping ``in_channels`` local features to the attention dimension."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, as the official LTPA code initialises every layer."""
        nn.init.xavier_uniform_(self.op.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class AttentionBlock(nn.Module):
    """One attention level: compatibility scores, softmax over all positions, attended vector.

    Args:
        channels: dimension shared by the local features and the global feature.
        compatibility: ``"dp"`` (``<l_i, g>``) or ``"pc"`` (``<u, l_i + g>``, learned ``u``).

    ``forward(l, g)`` takes ``l`` (N,C,H,W) and ``g`` (N,C) and returns ``(g_a, a)``: the attended
    vector (N,C) and the attention map (N,H,W), which sums to 1 per image.
    """

    def __init__(self, channels: int, compatibility: str = "pc") -> None:
        super().__init__()
        if compatibility not in COMPATIBILITIES:
            raise UserError(
                f"unknown attention compatibility {compatibility!r}: use one of {COMPATIBILITIES}"
            )
        self.channels = int(channels)
        self.compatibility = compatibility
        # u: the learned vector of the parametrised compatibility, stored as a 1x1 conv weight (1,C,1,1).
        self.u = (
            nn.Conv2d(channels, 1, kernel_size=1, padding=0, bias=False) if compatibility == "pc" else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform ``u`` (official LTPA code). A He/Kaiming init with fan_out=1 would give
        ``u`` a standard deviation of 1.4 and a near one-hot (saturated) attention map at init."""
        if self.u is not None:
            nn.init.xavier_uniform_(self.u.weight)

    def scores(self, l: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Compatibility scores ``c`` (N,H,W) before the softmax."""
        if l.shape[:2] != g.shape[:2] or g.dim() != 2:
            raise ValueError(
                f"local features {tuple(l.shape)} and global {tuple(g.shape)} do not match (N,C)"
            )
        g4 = g[:, :, None, None]
        if self.u is None:
            return (l * g4).sum(dim=1)
        return self.u(l + g4)[:, 0]

    def forward(self, l: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.scores(l, g)
        n, h, w = c.shape
        a = F.softmax(c.reshape(n, h * w), dim=1).reshape(n, h, w)
        g_a = (l * a[:, None].to(l.dtype)).sum(dim=(2, 3))
        return g_a, a


class AttentionHead(nn.Module):
    """Classifier over the attended vectors of all levels.

    Args:
        in_features: dimension of each level's attended vector.
        num_classes: number of logits.
        mode: ``"concat"`` (one linear layer on the concatenated vectors) or ``"indep"`` (one linear
            layer per level; the mean of the per-level ``log_softmax`` outputs is returned).
    """

    def __init__(self, in_features: Sequence[int], num_classes: int, mode: str = "concat") -> None:
        super().__init__()
        if mode not in HEADS:
            raise UserError(f"unknown attention head {mode!r}: use one of {HEADS}")
        if len(in_features) == 0:
            raise ValueError("AttentionHead needs at least one attention level")
        self.mode = mode
        self.in_features = [int(f) for f in in_features]
        if mode == "concat":
            self.classify = nn.Linear(sum(self.in_features), num_classes)
        else:
            self.classifiers = nn.ModuleList(nn.Linear(f, num_classes) for f in self.in_features)

    def forward(self, attended: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(attended) != len(self.in_features):
            raise ValueError(f"expected {len(self.in_features)} attended vectors, got {len(attended)}")
        if self.mode == "concat":
            return self.classify(torch.cat(list(attended), dim=1))
        logps = [F.log_softmax(clf(v), dim=1) for clf, v in zip(self.classifiers, attended, strict=True)]
        return torch.stack(logps, dim=0).mean(dim=0)


class LocalAttention(nn.Module):
    """Projectors + attention blocks + head for a list of local feature maps and one global vector.

    Shared by the VGG and ResNet attention models. ``local_channels`` lists each level's channel
    count; levels whose channel count differs from ``attention_dim`` get a :class:`ProjectorBlock`
    (up-projection), the others use their features as they are.

    ``forward(locals_, g)`` returns ``(logits, maps)`` with maps (N,H_s,W_s), one per level.
    """

    def __init__(
        self,
        local_channels: Sequence[int],
        attention_dim: int,
        num_classes: int,
        compatibility: str = "pc",
        head: str = "concat",
    ) -> None:
        super().__init__()
        self.projectors = nn.ModuleList(
            ProjectorBlock(c, attention_dim) if c != attention_dim else nn.Identity() for c in local_channels
        )
        self.blocks = nn.ModuleList(AttentionBlock(attention_dim, compatibility) for _ in local_channels)
        self.head = AttentionHead([attention_dim] * len(local_channels), num_classes, head)

    def forward(
        self, locals_: Sequence[torch.Tensor], g: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        attended, maps = [], []
        for proj, block, l in zip(self.projectors, self.blocks, locals_, strict=True):
            g_a, a = block(proj(l), g)
            attended.append(g_a)
            maps.append(a)
        return self.head(attended), maps
