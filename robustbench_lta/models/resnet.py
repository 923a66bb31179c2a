"""CIFAR ResNets (ResNet-18, pre-activation ResNet-164) and their LTPA attention variants.

Baselines:

* ``resnet18``: CIFAR ResNet-18: conv3x3(64)+BN+ReLU, four stages of two BasicBlocks with
  64-128-256-512 channels (strides 1,2,2,2; 32 -> 32,16,8,4 at 32x32 input), global average pool,
  linear classifier.
* ``resnet164``: the pre-activation bottleneck ResNet-164 used by the LTPA paper (He et al. 2016,
  "Identity mappings"): conv3x3(16), three stages of 18 bottleneck blocks (BN-ReLU-conv1x1,
  BN-ReLU-conv3x3, BN-ReLU-conv1x1) with 16/32/64 bottleneck channels x4 expansion (outputs
  64/128/256; strides 1,2,2; 32,16,8 at 32x32 input), final BN+ReLU, global average pool, linear.

Attention variants (``resnet18_att2_*``, ``resnet164_att{2,3}_*``) -- our adaptation of the paper's
VGG recipe to ResNets:

* local feature maps are stage outputs: resnet164 att3 = stage1 (32x32), stage2 (16x16) and
  stage3 (8x8, after the final BN+ReLU); att2 = stages 2 and 3. resnet18 att2 = stage2 (16x16) and
  stage3 (8x8); its stage4 (4x4) only feeds the global feature;
* the global feature is ``g = Linear(global-avg-pool(last stage output))`` with the attention
  dimension = the last stage's channel count (512 for resnet18, 256 for resnet164 at width 1);
* local maps with fewer channels are projected up to that dimension with a bias-free 1x1
  convolution (:class:`~.attention.ProjectorBlock`), exactly as for VGG's conv7;
* the attention blocks (``dp`` / ``pc``) and heads (``concat`` / ``indep``) are those of
  :mod:`robustbench_lta.models.attention`; the linear classifier of the baseline is replaced by the
  attention head.

``width`` scales every channel count (``max(4, round(c * width))``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionBlock, LocalAttention, ProjectorBlock
from .base import CIFAR10_MEAN, CIFAR10_STD, ImageClassifier, check_width, scale_channels
from .registry import register_attention_variants, register_model


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation residual block of ResNet-18: two conv3x3+BN, projection shortcut if needed."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck block of ResNet-164 (expansion 4)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, kernel_size=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + shortcut


def _init_weights(module: nn.Module) -> None:
    """He init for convolutions, BN to identity; attention layers keep their Xavier init."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, AttentionBlock | ProjectorBlock):
            m.reset_parameters()


class CifarResNet(ImageClassifier):
    """ResNet-18 (``depth=18``) or pre-activation ResNet-164 (``depth=164``) for CIFAR-sized inputs.

    With ``attention_levels`` > 0 the final linear layer is replaced by LTPA attention over stage
    outputs (see the module docstring).

    Args:
        depth: 18 or 164.
        num_classes: number of logits.
        width: channel multiplier.
        attention_levels: 0 (baseline), 2, or 3 (resnet164 only).
        compatibility: ``"dp"`` or ``"pc"`` (attention models).
        head: ``"concat"`` or ``"indep"`` (attention models).
        mean, std: normalisation statistics of the [0,1] inputs.
    """

    def __init__(
        self,
        depth: int = 18,
        num_classes: int = 10,
        width: float = 1.0,
        attention_levels: int = 0,
        compatibility: str | None = None,
        head: str | None = None,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__(num_classes=num_classes, mean=mean, std=std)
        self.width = check_width(width)
        self.depth = int(depth)
        self.attention_levels = int(attention_levels)
        self.compatibility = compatibility
        self.head_mode = head
        stages: list[nn.Sequential] = []
        if self.depth == 18:
            self.preact = False
            c = scale_channels(64, self.width)
            self.stem = nn.Sequential(
                nn.Conv2d(self.in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()
            )
            for base, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                c_out = scale_channels(base, self.width)
                stages.append(nn.Sequential(BasicBlock(c, c_out, stride), BasicBlock(c_out, c_out, 1)))
                c = c_out
            att_stages = {2: (1, 2)}  # stage2 (16x16), stage3 (8x8)
            self.final_act: nn.Module = nn.Identity()
        elif self.depth == 164:
            self.preact = True
            n_blocks = (self.depth - 2) // 9  # 18
            c = scale_channels(16, self.width)
            self.stem = nn.Conv2d(self.in_channels, c, 3, padding=1, bias=False)
            for base, stride in ((16, 1), (32, 2), (64, 2)):
                planes = scale_channels(base, self.width)
                blocks = []
                for i in range(n_blocks):
                    blocks.append(PreActBottleneck(c, planes, stride if i == 0 else 1))
                    c = planes * PreActBottleneck.expansion
                stages.append(nn.Sequential(*blocks))
            att_stages = {2: (1, 2), 3: (0, 1, 2)}
            self.final_act = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())
        else:
            raise ValueError(f"CifarResNet supports depth 18 or 164, got {depth}")
        self.stages = nn.ModuleList(stages)
        self.stage_channels = [
            s[-1].conv3.out_channels if self.preact else s[-1].conv2.out_channels for s in stages
        ]
        self.feature_dim = c
        if self.attention_levels == 0:
            self.local_stages: tuple[int, ...] = ()
            self.fc = nn.Linear(c, self.num_classes)
        else:
            if self.attention_levels not in att_stages:
                raise ValueError(
                    f"resnet{self.depth} supports attention levels {sorted(att_stages)}, "
                    f"got {self.attention_levels}"
                )
            self.local_stages = att_stages[self.attention_levels]
            self.global_fc = nn.Linear(c, c)  # g = Linear(GAP(last stage)), attention dim = c
            self.attention = LocalAttention(
                [self.stage_channels[i] for i in self.local_stages],
                c,
                self.num_classes,
                compatibility or "pc",
                head or "concat",
            )
        _init_weights(self)

    def forward_normalized(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.stem(z)
        outs = []
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == last:
                x = self.final_act(x)
            outs.append(x)
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        if self.attention_levels == 0:
            return self.fc(pooled), []
        g = self.global_fc(pooled)
        return self.attention([outs[i] for i in self.local_stages], g)


# ------------------------------------------------------------------------------------ registration
@register_model(family="resnet")
def resnet18(num_classes: int = 10, width: float = 1.0, **kw) -> CifarResNet:
    """CIFAR ResNet-18 (BasicBlocks, 64-128-256-512)."""
    return CifarResNet(18, num_classes=num_classes, width=width, **kw)


@register_model(family="resnet")
def resnet164(num_classes: int = 10, width: float = 1.0, **kw) -> CifarResNet:
    """Pre-activation bottleneck ResNet-164 for CIFAR (the LTPA paper's ResNet)."""
    return CifarResNet(164, num_classes=num_classes, width=width, **kw)


for _depth, _variants in (
    (18, [(2, "concat", "pc"), (2, "concat", "dp"), (2, "indep", "pc")]),
    (164, [(2, "concat", "pc"), (2, "concat", "dp"), (3, "concat", "pc")]),
):
    register_attention_variants(
        partial(CifarResNet, _depth),
        prefix=f"resnet{_depth}",
        family="resnet",
        variants=_variants,
        title=f"ResNet-{_depth}",
        module=__name__,
    )
