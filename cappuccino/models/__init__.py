"""Networks: encoders of (feature window, portfolio weights), the actor-critic on top, and the
policies trading loads from checkpoints."""

from cappuccino.models.encoders import Encoder, MLPEncoder, layer_init
from cappuccino.models.loading import PolicyEnsemble, PolicySchema, TrainedPolicy, load_policy
from cappuccino.models.policy import ActorCritic

__all__ = ["ActorCritic", "Encoder", "MLPEncoder", "PolicyEnsemble", "PolicySchema", "TrainedPolicy", "layer_init", "load_policy"]
