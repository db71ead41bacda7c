"""Networks: encoders of (feature window, portfolio weights) and the actor-critic on top."""

from cappuccino.models.encoders import ENCODERS, Encoder, MLPEncoder, build_encoder, layer_init
from cappuccino.models.policy import ActorCritic

__all__ = ["ENCODERS", "ActorCritic", "Encoder", "MLPEncoder", "build_encoder", "layer_init"]
