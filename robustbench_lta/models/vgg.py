"""VGG-16 baseline and the "Learn To Pay Attention" VGG attention models.

``vgg16``: CIFAR VGG-16 with batch norm (the LTPA paper's baseline): 13 conv3x3+BN+ReLU layers in
five blocks (64, 64 | 128, 128 | 256 x3 | 512 x3 | 512 x3), a 2x2 max-pool after each block, then a
classifier Linear(512, 512) + ReLU + Linear(512, K). At 32x32 input the last block leaves 1x1.

``vgg16_att{1,2,3}_{concat,indep}_{dp,pc}``: the attention VGG of the paper / official code
(SaoYan/LearnToPayAttention, ``AttnVGG_before``). The first two max-pools are removed so that, at
32x32 input, the local features are

* conv7  (256 ch, 32x32) -- projected up to 512 with a 1x1 :class:`~.attention.ProjectorBlock`,
* conv10 (512 ch, 16x16),
* conv13 (512 ch, 8x8),

each taken before the max-pool that follows it. After conv13 a max-pool (4x4) and two more
conv3x3+BN+ReLU layers, each followed by a max-pool, reduce the map to 1x1, and a dense layer (a 1x1
convolution on the 1x1 map; the official code's ``dense`` with kernel im_size/32) gives the global
feature ``g`` (512-d at width 1). ``attN`` is the number of attention levels, as in the paper's
VGG-att2 / VGG-att3: att3 uses conv7+conv10+conv13, att2 conv10+conv13, att1 conv13 only.
Compatibility ``dp``/``pc`` and heads ``concat``/``indep`` are described in
:mod:`robustbench_lta.models.attention`.

Compute-matched baselines (no attention, the attention models' pooling layout, so the same 32x32 /
16x16 / 8x8 resolutions and GMACs within 10 % of ``vgg16_att2_*`` / ``vgg16_att3_*``; plain
``vgg16`` costs ~12x less at 32x32 because it pools early):

* ``vgg16_matched``: the official LTPA code's ``attention=False`` path: the same trunk, ``block6``
  and ``dense`` layer, and a linear classifier on the global feature ``g``. Pairs with every
  ``vgg16_att*``.
* ``vgg16_matched_att{2,3}_gap``: the attention replaced by uniform attention, i.e. a global
  average pool of each of the att2 / att3 local maps (conv7 projected to 512 as in att3), the
  pooled vectors concatenated into one linear classifier: the ``concat`` head with ``a_i = 1/HW``.
  ``g`` is not needed and not built.

All max-pools use ``ceil_mode=True`` (identical to floor at 32x32) and the map is average-pooled to
1x1 before the dense/classifier layer if it is larger, so other input sizes work too.
``width`` scales every channel count (``max(4, round(c * width))``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .attention import COMPATIBILITIES, HEADS, AttentionBlock, LocalAttention, ProjectorBlock
from .base import CIFAR10_MEAN, CIFAR10_STD, ImageClassifier, check_width, scale_channels
from .registry import register_attention_variants, register_model


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (padding 1, no bias: BN follows) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)


def _init_weights(module: nn.Module) -> None:
    """He init for convolutions, BN to identity; attention layers keep their Xavier init."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, AttentionBlock | ProjectorBlock):
            m.reset_parameters()


def _to_vector(x: torch.Tensor) -> torch.Tensor:
    """(N,C,H,W) -> (N,C): the 1x1 map flattened, average-pooled first if it is larger."""
    if x.shape[-2:] != (1, 1):
        x = F.adaptive_avg_pool2d(x, 1)
    return x.flatten(1)


class VGG16(ImageClassifier):
    """CIFAR VGG-16 with batch norm, no attention (the LTPA baseline)."""

    attention_levels = 0
    # channels per block; a max-pool follows every block
    BLOCKS: tuple[tuple[int, ...], ...] = (
        (64, 64),
        (128, 128),
        (256, 256, 256),
        (512, 512, 512),
        (512, 512, 512),
    )

    def __init__(
        self,
        num_classes: int = 10,
        width: float = 1.0,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__(num_classes=num_classes, mean=mean, std=std)
        self.width = check_width(width)
        layers: list[nn.Module] = []
        c_in = self.in_channels
        for block in self.BLOCKS:
            for c in block:
                c_out = scale_channels(c, self.width)
                layers.append(conv_bn_relu(c_in, c_out))
                c_in = c_out
            layers.append(_pool())
        self.features = nn.Sequential(*layers)
        hidden = scale_channels(512, self.width)
        self.classifier = nn.Sequential(
            nn.Linear(c_in, hidden), nn.ReLU(), nn.Linear(hidden, self.num_classes)
        )
        _init_weights(self)

    def forward_normalized(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.classifier(_to_vector(self.features(z))), []


class AttnVGG16(ImageClassifier):
    """VGG-16 with LTPA attention over conv7 / conv10 / conv13 (see the module docstring).

    Args:
        num_classes: number of logits.
        width: channel multiplier.
        attention_levels: 1 (conv13), 2 (conv10, conv13) or 3 (conv7, conv10, conv13).
        compatibility: ``"dp"`` or ``"pc"``.
        head: ``"concat"`` or ``"indep"``.
        mean, std: normalisation statistics of the [0,1] inputs.
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: float = 1.0,
        attention_levels: int = 3,
        compatibility: str = "pc",
        head: str = "concat",
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__(num_classes=num_classes, mean=mean, std=std)
        if attention_levels not in (1, 2, 3):
            raise ValueError(f"AttnVGG16 supports 1, 2 or 3 attention levels, got {attention_levels}")
        self.width = check_width(width)
        self.attention_levels = int(attention_levels)
        self.compatibility = compatibility
        self.head_mode = head
        ch = partial(scale_channels, width=self.width)

        def block(c_in: int, c_out: int, n: int) -> nn.Sequential:
            return nn.Sequential(*[conv_bn_relu(c_in if i == 0 else c_out, c_out) for i in range(n)])

        self.block1 = block(self.in_channels, ch(64), 2)  # conv1-2, 32x32 (no pool: removed)
        self.block2 = block(ch(64), ch(128), 2)  # conv3-4, 32x32 (no pool: removed)
        self.block3 = block(ch(128), ch(256), 3)  # conv5-7, 32x32 -> local l1 (conv7)
        self.block4 = block(ch(256), ch(512), 3)  # conv8-10, 16x16 -> local l2 (conv10)
        self.block5 = block(ch(512), ch(512), 3)  # conv11-13, 8x8 -> local l3 (conv13)
        self.pool = _pool()
        # two more conv layers, each followed by a max-pool: 4x4 -> 2x2 -> 1x1
        self.block6 = nn.Sequential(
            conv_bn_relu(ch(512), ch(512)), _pool(), conv_bn_relu(ch(512), ch(512)), _pool()
        )
        self.attention_dim = ch(512)
        self.dense = nn.Conv2d(ch(512), self.attention_dim, kernel_size=1, bias=True)
        local_channels = [ch(256), ch(512), ch(512)][3 - self.attention_levels :]
        self.attention = LocalAttention(
            local_channels, self.attention_dim, self.num_classes, compatibility, head
        )
        _init_weights(self)

    def forward_normalized(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.block2(self.block1(z))
        l1 = self.block3(x)
        l2 = self.block4(self.pool(l1))
        l3 = self.block5(self.pool(l2))
        x = self.block6(self.pool(l3))
        g = self.dense(F.adaptive_avg_pool2d(x, 1) if x.shape[-2:] != (1, 1) else x).flatten(1)
        locals_ = [l1, l2, l3][3 - self.attention_levels :]
        return self.attention(locals_, g)


class MatchedVGG16(ImageClassifier):
    """VGG-16 trunk with the attention models' pooling layout and no attention (see module docstring).

    Args:
        num_classes: number of logits.
        width: channel multiplier.
        gap_levels: 0 for the ``g`` classifier (``vgg16_matched``); 2 or 3 for global-average-pooled
            conv10+conv13 or conv7+conv10+conv13 (``vgg16_matched_att{2,3}_gap``).
        mean, std: normalisation statistics of the [0,1] inputs.
    """

    attention_levels = 0

    def __init__(
        self,
        num_classes: int = 10,
        width: float = 1.0,
        gap_levels: int = 0,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__(num_classes=num_classes, mean=mean, std=std)
        if gap_levels not in (0, 2, 3):
            raise ValueError(f"MatchedVGG16 supports gap_levels 0, 2 or 3, got {gap_levels}")
        self.width = check_width(width)
        self.gap_levels = int(gap_levels)
        ch = partial(scale_channels, width=self.width)

        def block(c_in: int, c_out: int, n: int) -> nn.Sequential:
            return nn.Sequential(*[conv_bn_relu(c_in if i == 0 else c_out, c_out) for i in range(n)])

        # the same layers, in the same order and resolutions, as AttnVGG16
        self.block1 = block(self.in_channels, ch(64), 2)
        self.block2 = block(ch(64), ch(128), 2)
        self.block3 = block(ch(128), ch(256), 3)
        self.block4 = block(ch(256), ch(512), 3)
        self.block5 = block(ch(512), ch(512), 3)
        self.pool = _pool()
        dim = ch(512)
        if self.gap_levels == 0:
            self.block6 = nn.Sequential(conv_bn_relu(dim, dim), _pool(), conv_bn_relu(dim, dim), _pool())
            self.dense = nn.Conv2d(dim, dim, kernel_size=1, bias=True)
            self.classify = nn.Linear(dim, self.num_classes)
        else:
            local_channels = [ch(256), dim, dim][3 - self.gap_levels :]
            self.projectors = nn.ModuleList(
                ProjectorBlock(c, dim) if c != dim else nn.Identity() for c in local_channels
            )
            self.classify = nn.Linear(dim * self.gap_levels, self.num_classes)
        _init_weights(self)

    def forward_normalized(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        l1 = self.block3(self.block2(self.block1(z)))
        l2 = self.block4(self.pool(l1))
        l3 = self.block5(self.pool(l2))
        if self.gap_levels == 0:
            x = self.block6(self.pool(l3))
            g = self.dense(F.adaptive_avg_pool2d(x, 1) if x.shape[-2:] != (1, 1) else x).flatten(1)
            return self.classify(g), []
        locals_ = [l1, l2, l3][3 - self.gap_levels :]
        pooled = [_to_vector(proj(l)) for proj, l in zip(self.projectors, locals_, strict=True)]
        return self.classify(torch.cat(pooled, dim=1)), []


# ------------------------------------------------------------------------------------ registration
@register_model(family="vgg")
def vgg16(num_classes: int = 10, width: float = 1.0, **kw) -> VGG16:
    """CIFAR VGG-16 with batch norm (LTPA baseline)."""
    return VGG16(num_classes=num_classes, width=width, **kw)


register_attention_variants(
    AttnVGG16,
    prefix="vgg16",
    family="vgg",
    variants=[(lv, hd, cp) for lv in (1, 2, 3) for hd in HEADS for cp in COMPATIBILITIES],
    title="VGG-16",
    module=__name__,
)


@register_model(family="vgg")
def vgg16_matched(num_classes: int = 10, width: float = 1.0, **kw) -> MatchedVGG16:
    """Compute-matched baseline of vgg16_att*: same trunk and resolutions, no attention (classifier on g)."""
    return MatchedVGG16(num_classes=num_classes, width=width, gap_levels=0, **kw)


@register_model(family="vgg")
def vgg16_matched_att2_gap(num_classes: int = 10, width: float = 1.0, **kw) -> MatchedVGG16:
    """Compute-matched baseline of vgg16_att2_concat_*: uniform (global-average) pooling of the same maps."""
    return MatchedVGG16(num_classes=num_classes, width=width, gap_levels=2, **kw)


@register_model(family="vgg")
def vgg16_matched_att3_gap(num_classes: int = 10, width: float = 1.0, **kw) -> MatchedVGG16:
    """Compute-matched baseline of vgg16_att3_concat_*: uniform (global-average) pooling of the same maps."""
    return MatchedVGG16(num_classes=num_classes, width=width, gap_levels=3, **kw)
