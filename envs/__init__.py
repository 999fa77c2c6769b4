"""Envs for memrl: ``make_vec`` for every suite (MiniGrid Memory, NoisyRecall, POPGym, any
gymnasium id) and the suite registry (envs.suites) that says which family an id belongs to.

envs/ knows nothing of torch models. Importing it registers memrl/NoisyRecall-v0 and the
diagnostic MiniGrid Memory variants (envs.minigrid_probes) with gymnasium, and the built-in suites
with envs.suites.
"""

from envs.minigrid_wrappers import MEMORY_IDS, CompactObservation, MovementActions
from envs.vector import NOISY_RECALL_ID, check_spaces, is_minigrid, make_vec

from envs import popgym as _popgym  # noqa: F401  (registers the POPGym suite; the package loads on first use)
from envs.minigrid_probes import PROBE_IDS, register_probes
from envs.noisy_recall import NoisyRecallEnv, NoisyRecallVectorEnv, register_envs
from envs.suites import Suite, all_suites, flag_owners, register, suite_of

register_envs()
register_probes()

__all__ = [
    "make_vec", "check_spaces", "MEMORY_IDS", "PROBE_IDS", "NOISY_RECALL_ID", "is_minigrid", "CompactObservation",
    "MovementActions", "NoisyRecallEnv", "NoisyRecallVectorEnv", "register_envs",
    "Suite", "suite_of", "all_suites", "register", "flag_owners",
]
