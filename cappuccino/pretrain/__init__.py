"""Self-supervised pre-training of the FT-Transformer encoder on the agent's windows (pretrain.py).

``objectives``: the pretext tasks (masked feature modelling, replaced feature detection);
``trainer``: the job (windows, training loop, early stopping, encoder files, tracking).
"""

from cappuccino.pretrain.objectives import (
    Corruption,
    MaskedFeatureModelling,
    PretextModel,
    ReplacedFeatureDetection,
    build_pretext,
    masked_mse,
    random_token_mask,
    replace_features,
)
from cappuccino.pretrain.trainer import WindowBars, pretrain, run, split_decision_bars, validate

__all__ = [
    "Corruption",
    "MaskedFeatureModelling",
    "PretextModel",
    "ReplacedFeatureDetection",
    "WindowBars",
    "build_pretext",
    "masked_mse",
    "pretrain",
    "random_token_mask",
    "replace_features",
    "run",
    "split_decision_bars",
    "validate",
]
