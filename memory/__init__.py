"""Memory backbones behind one interface (memory.base.Memory) and a registry by name.

memory/ knows nothing of RL. Backbone modules register themselves on import; add yours to the
import list below.
"""

from memory.base import Memory, State
from memory.registry import describe, make, names, options, parse_options, register

# Backbone modules (importing registers them).
from memory import classic  # noqa: E402,F401  lstm, gru, mlp
from memory import mlstm  # noqa: E402,F401  mlstm, mlstm-orth
from memory import mru  # noqa: E402,F401  mru
from memory import mingru  # noqa: E402,F401  mingru
from memory import lru  # noqa: E402,F401  lru
from memory import ffm  # noqa: E402,F401  ffm
from memory import ssm  # noqa: E402,F401  ssm
from memory import trxl  # noqa: E402,F401  trxl

__all__ = ["Memory", "State", "make", "names", "options", "parse_options", "register", "describe"]
