"""Envs for memrl: ``make_vec`` for MiniGrid Memory ids, NoisyRecall and any gymnasium id.

envs/ knows nothing of torch models. Importing it registers memrl/NoisyRecall-v0 and the
diagnostic MiniGrid Memory variants (envs.minigrid_probes) with gymnasium.
"""

from envs.minigrid_wrappers import MEMORY_IDS, CompactObservation, MovementActions
from envs.vector import NOISY_RECALL_ID, is_minigrid, make_vec

from envs.minigrid_probes import PROBE_IDS, register_probes
from envs.noisy_recall import NoisyRecallEnv, NoisyRecallVectorEnv, register_envs

register_envs()
register_probes()

__all__ = [
    "make_vec", "MEMORY_IDS", "PROBE_IDS", "NOISY_RECALL_ID", "is_minigrid", "CompactObservation", "MovementActions",
    "NoisyRecallEnv", "NoisyRecallVectorEnv", "register_envs",
]
