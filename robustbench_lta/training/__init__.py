"""Training and checkpoints: the paper's SGD recipe, safetensors weights with a JSON model card.

``train(config)`` trains and writes ``best``/``last`` checkpoints (resumable); ``save_checkpoint`` /
``load_model`` / ``read_card`` write and read checkpoints. Pickle files are refused, never opened.
"""

from __future__ import annotations

from .checkpoint import load_model, read_card, save_checkpoint
from .trainer import TrainResult, train

__all__ = ["TrainResult", "load_model", "read_card", "save_checkpoint", "train"]
