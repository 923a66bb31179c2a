"""Models: the registry, the VGG / ResNet baselines and their "Learn To Pay Attention" variants.

Importing this package registers every built-in architecture: each module in this folder is
imported (:mod:`pkgutil` scan), so adding an architecture is adding one file that uses
``@register_model``; nothing else needs an edit::

    import torch
    from robustbench_lta.models import create_model, list_models
    model = create_model("vgg16_att3_concat_pc", num_classes=10, width=0.5).eval()
    images = torch.rand(2, 3, 32, 32)
    logits, maps = model(images, return_attention=True)
"""

from __future__ import annotations

from ..discovery import import_package_modules
from .attention import AttentionBlock, AttentionHead, LocalAttention, ProjectorBlock
from .base import ImageClassifier, NormalizedModel, parameter_count
from .registry import ModelInfo, create_model, list_models, model_info, register_model

import_package_modules(__name__, "model")

__all__ = [
    "AttentionBlock",
    "AttentionHead",
    "ImageClassifier",
    "LocalAttention",
    "ModelInfo",
    "NormalizedModel",
    "ProjectorBlock",
    "create_model",
    "list_models",
    "model_info",
    "parameter_count",
    "register_model",
]
