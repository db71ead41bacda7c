"""Self-supervised pretext tasks for the FT-Transformer encoder, on the agent's own windows.

Both tasks read the final embeddings of the encoder's market tokens (``encode_tokens``) through
one head, ``LayerNorm -> Linear(d_token, V)``, where V is the number of window values a market
token holds: F for ``tokens=asset_time`` (one (bar, asset) token), A*F for ``time`` (one bar),
1 for ``feature`` (one value), patch_bars*F for ``patch`` (one asset's patch of bars). The
encoder's ``token_values`` says which values each token holds, so the head's row v of token k
is value v of that token (a ``patch`` window's zero left-padding included: a constant that the
token's position gives away).
The LayerNorm is there because the encoder's token outputs are the un-normalised residual
stream of a pre-norm Transformer (its own [CLS] head starts with a LayerNorm as well).

``mfm`` masked feature modelling
    In each window exactly ``round(mask_ratio * n_tokens)`` market tokens (at least one) are
    drawn uniformly and shown to the encoder as a learned [MASK] vector in place of their
    content, with their position kept (see cappuccino.models.ft_transformer). The head predicts
    the masked tokens' original values; the loss is their mean squared error, over masked
    tokens only, so the model is never rewarded for copying the values it can see.

``rfd`` replaced feature detection, Rubachev et al. (2022), "Revisiting Pretraining Objectives
for Tabular Deep Learning", https://arxiv.org/abs/2207.03208
    Each window value is replaced with probability ``mask_ratio`` (independently) by the value
    at the same (bar position, asset, feature) of another window of the batch, drawn uniformly,
    i.e. by a sample of that feature's marginal distribution. The head predicts, per value,
    whether it was replaced; the loss is the binary cross-entropy with logits over every value.

A batch is corrupted (``corrupt``) apart from being scored (``value_losses``), so validation
scores one fixed corruption at every evaluation. ``baseline_losses`` scores a model-free
predictor on the same corruption: the per-feature mean (mfm) or the replacement rate (rfd).

The portfolio-weight tokens are never masked or replaced; the trainer feeds them random weights.
"""

from __future__ import annotations

import abc
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cappuccino.models.ft_transformer import FTTransformerEncoder

class Corruption(NamedTuple):
    window: Tensor  # (N, L, A, F) the encoder's input: the original (mfm), values replaced (rfd)
    token_mask: Tensor | None  # (N, n) bool market tokens shown as [MASK] (mfm); None (rfd)
    target: Tensor  # (N, n, V) each token's original values (mfm), 1.0 where replaced (rfd)


def random_token_mask(n: int, n_tokens: int, ratio: float, generator: torch.Generator) -> Tensor:
    """(n, n_tokens) bool with exactly max(1, round(ratio * n_tokens)) True per row, uniformly placed."""
    k = max(1, round(ratio * n_tokens))
    scores = torch.rand(n, n_tokens, generator=generator, device=generator.device)
    return scores.argsort(-1).argsort(-1) < k  # the ranks of uniform scores are a random permutation


def masked_squared_errors(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """(K * V,) squared errors of the K tokens where ``mask`` (N, n) is True; prediction, target (N, n, V)."""
    return (prediction - target).square()[mask].flatten()


def masked_mse(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the masked tokens' values only; unmasked tokens count for nothing."""
    return masked_squared_errors(prediction, target, mask).mean()


def replace_features(window: Tensor, p: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(corrupted (N, L, A, F), replaced (N, L, A, F) bool): each value, with probability ``p``,
    becomes the value at the same (bar position, asset, feature) of another window of the batch."""
    n = window.shape[0]
    if n < 2:
        raise ValueError(f"replacing features needs a batch of at least 2 windows to draw from, got {n}")
    device = generator.device
    replaced = torch.rand(window.shape, generator=generator, device=device) < p
    offset = torch.randint(1, n, window.shape, generator=generator, device=device)  # never 0: another window
    donor = (torch.arange(n, device=device).view(-1, 1, 1, 1) + offset) % n  # (N, L, A, F)
    return torch.where(replaced, window.gather(0, donor), window), replaced


class PretextModel(nn.Module, abc.ABC):
    """An encoder and the head on its market tokens; subclasses define the task."""

    ratio_name: str  # the metric value_losses / baseline_losses is logged as

    def __init__(self, encoder: FTTransformerEncoder, mask_ratio: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.n_tokens = encoder.n_market_tokens
        self.head = nn.Sequential(nn.LayerNorm(encoder.d_token), nn.Linear(encoder.d_token, encoder.values_per_token))

    def predict(
        self, window: Tensor, weights: Tensor, token_mask: Tensor | None = None, mask_token: Tensor | None = None
    ) -> Tensor:
        """(N, n, V) head outputs for the market tokens of ``window`` (N, L, A, F), ``weights`` (N, A + 1)."""
        tokens = self.encoder.encode_tokens(window, weights, token_mask, mask_token)  # (N, T, d)
        return self.head(tokens[:, : self.n_tokens])

    @abc.abstractmethod
    def corrupt(self, window: Tensor, generator: torch.Generator) -> Corruption:
        """Draw this task's corruption of a batch of windows."""

    @abc.abstractmethod
    def value_losses(self, corruption: Corruption, weights: Tensor) -> Tensor:
        """(K,) the loss of every value the task scores; the training loss is their mean."""

    @abc.abstractmethod
    def baseline_losses(self, corruption: Corruption, feature_mean: Tensor) -> Tensor:
        """(K,) the same losses for a model-free predictor; ``feature_mean`` (A, F) over training windows."""


class MaskedFeatureModelling(PretextModel):
    """``mfm``: restore the values of masked market tokens (see the module docstring)."""

    ratio_name = "reconstruction_ratio"  # masked-value MSE / MSE of per-feature mean imputation

    def __init__(self, encoder: FTTransformerEncoder, mask_ratio: float) -> None:
        super().__init__(encoder, mask_ratio)
        bound = encoder.d_token**-0.5  # initialised like the encoder's [CLS] token
        self.mask_token = nn.Parameter(nn.init.uniform_(torch.empty(encoder.d_token), -bound, bound))

    def corrupt(self, window: Tensor, generator: torch.Generator) -> Corruption:
        mask = random_token_mask(window.shape[0], self.n_tokens, self.mask_ratio, generator)
        return Corruption(window, mask, self.encoder.token_values(window))

    def value_losses(self, corruption: Corruption, weights: Tensor) -> Tensor:
        assert corruption.token_mask is not None
        prediction = self.predict(corruption.window, weights, corruption.token_mask, self.mask_token)
        return masked_squared_errors(prediction, corruption.target, corruption.token_mask)

    def baseline_losses(self, corruption: Corruption, feature_mean: Tensor) -> Tensor:
        assert corruption.token_mask is not None
        imputed = self.encoder.token_values(feature_mean.expand_as(corruption.window))
        return masked_squared_errors(imputed, corruption.target, corruption.token_mask)


class ReplacedFeatureDetection(PretextModel):
    """``rfd``: tell replaced values from original ones (see the module docstring)."""

    ratio_name = "detection_ratio"  # BCE / BCE of predicting the replacement rate everywhere

    def __init__(self, encoder: FTTransformerEncoder, mask_ratio: float) -> None:
        super().__init__(encoder, mask_ratio)
        # Start as the baseline, the replacement rate everywhere, instead of spending steps on it.
        nn.init.zeros_(self.head[-1].weight)
        nn.init.constant_(self.head[-1].bias, self.prior_logit)

    @property
    def prior_logit(self) -> float:
        return math.log(self.mask_ratio / (1 - self.mask_ratio))

    def corrupt(self, window: Tensor, generator: torch.Generator) -> Corruption:
        corrupted, replaced = replace_features(window, self.mask_ratio, generator)
        return Corruption(corrupted, None, self.encoder.token_values(replaced.to(window.dtype)))

    def value_losses(self, corruption: Corruption, weights: Tensor) -> Tensor:
        logits = self.predict(corruption.window, weights)
        return F.binary_cross_entropy_with_logits(logits, corruption.target, reduction="none").flatten()

    def baseline_losses(self, corruption: Corruption, feature_mean: Tensor) -> Tensor:
        prior = torch.full_like(corruption.target, self.prior_logit)
        return F.binary_cross_entropy_with_logits(prior, corruption.target, reduction="none").flatten()


PRETEXTS: dict[str, type[PretextModel]] = {"mfm": MaskedFeatureModelling, "rfd": ReplacedFeatureDetection}


def build_pretext(objective: str, encoder: FTTransformerEncoder, mask_ratio: float) -> PretextModel:
    """The pretext model for ``pretrain.objective``."""
    if objective not in PRETEXTS:
        raise ValueError(f"pretrain.objective: unknown {objective!r}; choose one of {list(PRETEXTS)}")
    return PRETEXTS[objective](encoder, mask_ratio)
