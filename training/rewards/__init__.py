"""Scorers shared by RL rewards and evaluation (base.py: the interface, registry and checks). The built-in ones
register on import; their heavy libraries load only when one is built."""
from . import clip, http, jpeg, ocr, pickscore, vlm_judge  # noqa: F401  (registers the built-in scorers)
from . import edit_judge, fidelity, prompt_following, text_rendering, vlm_questions  # noqa: F401  (evaluation's)
from .base import REGISTRY, RewardError, WeightedSum, build, register, score

__all__ = ["REGISTRY", "RewardError", "WeightedSum", "build", "register", "score"]
