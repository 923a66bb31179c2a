"""Model sources: project checkpoints, registry names, RobustBench, timm, torchvision, Hugging Face.

It sits on the models layer (and uses training's checkpoint loader for the project's own
checkpoints); the engine calls :func:`resolve_model_source` for every model of a sweep.
"""

from .card import ModelCard, Normalized, Published, ResolvedModel
from .check import card_preprocess_kwargs, check_data_against_card
from .resolve import resolve_model_source

__all__ = ["ModelCard", "Normalized", "Published", "ResolvedModel", "card_preprocess_kwargs",
           "check_data_against_card", "resolve_model_source"]
