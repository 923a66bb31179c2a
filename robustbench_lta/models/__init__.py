"""Models: the registry, the VGG / ResNet baselines and their "Learn To Pay Attention" variants.

Importing this package registers every built-in architecture::

    from robustbench_lta.models import create_model, list_models
    model = create_model("vgg16_att3_concat_pc", num_classes=10, width=0.5)
    logits, maps = model(images, return_attention=True)
"""

from __future__ import annotations

from .attention import AttentionBlock, AttentionHead, LocalAttention, ProjectorBlock
from .base import ImageClassifier, NormalizedModel, parameter_count
from .registry import ModelInfo, create_model, list_models, model_info, register_model

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
