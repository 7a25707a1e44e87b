"""Scorers shared by RL rewards and evaluation (base.py: the interface, registry and checks)."""
from .base import REGISTRY, RewardError, WeightedSum, build, register, score

__all__ = ["REGISTRY", "RewardError", "WeightedSum", "build", "register", "score"]
