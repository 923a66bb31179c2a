"""SmallCNN: a five-conv CIFAR-size network with the same LTPA attention, for fast CPU work.

Not from the paper. VGG-16 with attention keeps seven convolutions at full 32x32 resolution, which
is slow on a CPU. SmallCNN keeps the paper's mechanism (local maps scored against a global
feature, softmax over space, attention-weighted sums feed the head) on a network that trains to
useful accuracy in seconds. Tests, quick smoke runs and CPU-scale studies use it.

Layout at 32x32 input (channels at width 1):

    conv1-2  32ch  32x32  -> pool
    conv3-4  64ch  16x16  -> local l1 (attention level 1 of 2)   -> pool
    conv5   128ch   8x8   -> local l2 (attention level 2 of 2)   -> pool
    conv6   128ch   4x4   -> global max pool -> dense -> g (128-d)

``smallcnn`` classifies from g. The attention variants score l1 (up-projected 64 -> 128 with a
1x1 conv, as in the official LTPA code) and l2 against g.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .attention import LocalAttention
from .base import CIFAR10_MEAN, CIFAR10_STD, ImageClassifier, check_width, scale_channels
from .registry import register_attention_variants, register_model
from .vgg import _init_weights, conv_bn_relu


class SmallCNN(ImageClassifier):
    """Five 3x3 conv layers with batch norm; optional LTPA attention over two local levels.

    Args:
        num_classes: number of logits.
        width: channel multiplier.
        attention_levels: 0 (baseline) or 2.
        compatibility: ``"dp"`` or ``"pc"`` (attention models only).
        head: ``"concat"`` or ``"indep"`` (attention models only).
        mean, std: normalisation statistics of the [0,1] inputs.
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: float = 1.0,
        attention_levels: int = 0,
        compatibility: str = "pc",
        head: str = "concat",
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__(num_classes=num_classes, mean=mean, std=std)
        if attention_levels not in (0, 2):
            raise ValueError(f"SmallCNN supports 0 or 2 attention levels, got {attention_levels}")
        self.width = check_width(width)
        self.attention_levels = int(attention_levels)
        ch = partial(scale_channels, width=self.width)
        self.stem = nn.Sequential(conv_bn_relu(self.in_channels, ch(32)), conv_bn_relu(ch(32), ch(32)))
        self.local1 = nn.Sequential(conv_bn_relu(ch(32), ch(64)), conv_bn_relu(ch(64), ch(64)))
        self.local2 = conv_bn_relu(ch(64), ch(128))
        self.top = conv_bn_relu(ch(128), ch(128))
        self.dense = nn.Linear(ch(128), ch(128))
        if self.attention_levels:
            self.attention = LocalAttention([ch(64), ch(128)], ch(128), self.num_classes, compatibility, head)
        else:
            self.classifier = nn.Linear(ch(128), self.num_classes)
        _init_weights(self)

    def forward_normalized(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        l1 = self.local1(F.max_pool2d(self.stem(z), 2))
        l2 = self.local2(F.max_pool2d(l1, 2))
        top = self.top(F.max_pool2d(l2, 2))
        g = self.dense(F.adaptive_max_pool2d(top, 1).flatten(1))  # max: the digit can be anywhere
        if self.attention_levels:
            return self.attention([l1, l2], g)
        return self.classifier(F.relu(g)), []


@register_model(family="smallcnn")
def smallcnn(num_classes: int = 10, width: float = 1.0, **kw) -> SmallCNN:
    """SmallCNN baseline: five conv layers, CPU-fast (not from the paper)."""
    return SmallCNN(num_classes=num_classes, width=width, **kw)


register_attention_variants(
    SmallCNN,
    prefix="smallcnn",
    family="smallcnn",
    variants=[(2, "concat", "pc"), (2, "concat", "dp")],
    title="SmallCNN",
    module=__name__,
)
