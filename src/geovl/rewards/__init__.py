"""Rule-based rewards for GRPO on remote-sensing answers (Chinese and English).

Reward functions follow TRL's contract ``f(completions, **kwargs) -> list[float | None]`` and work
both inside ``trl.GRPOTrainer`` and in plain code:

>>> from geovl.rewards import rs_reward
>>> rs_reward(["约1.5平方公里"], answer=["150 ha"], qtype=["area"])
[1.0]

- :mod:`.route` — which rule a sample gets (its qtype, else detected from the question)
- :mod:`.rules` — the rules on (prediction, reference) pairs: yes/no, count, number with units,
  choice, date (year / interval), open (fuzzy + BLEU), format, brevity — all in [0, 1]
- :mod:`.bleu` — smoothed sentence BLEU (CJK characters / words as tokens)
- :mod:`.funcs` — the TRL reward functions (``rs_reward`` routed total, one per kind, format, brevity)
- :mod:`.plugins` — ``reward_file`` plugins (``*_reward`` functions) and weights
- :mod:`.cli` — ``geovl rewards score``
"""

from .funcs import (
    BUILTIN_REWARDS,
    DEFAULT_REWARDS,
    box_count_reward,
    box_format_reward,
    brevity_reward,
    choice_reward,
    completion_text,
    count_reward,
    date_reward,
    format_reward,
    grounding_reward,
    number_reward,
    open_reward,
    routed_reward,
    rs_reward,
    yes_no_reward,
)
from .plugins import RewardPluginError, load_reward_file, resolve_rewards
from .route import detect_qtype, route

__all__ = [
    "BUILTIN_REWARDS",
    "DEFAULT_REWARDS",
    "RewardPluginError",
    "box_count_reward",
    "box_format_reward",
    "brevity_reward",
    "choice_reward",
    "completion_text",
    "count_reward",
    "date_reward",
    "detect_qtype",
    "format_reward",
    "grounding_reward",
    "load_reward_file",
    "number_reward",
    "open_reward",
    "resolve_rewards",
    "route",
    "routed_reward",
    "rs_reward",
    "yes_no_reward",
]
