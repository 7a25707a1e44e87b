"""Training objectives, one idea per file: the interface (base), flow matching (the transformer's), and the VAE's
reconstruction objective with its perceptual loss and patch discriminator."""
from __future__ import annotations

from .base import Objective
from .flow_matching import FlowMatching, loss_weight, sample_sigmas

OBJECTIVES = {"flow_matching": FlowMatching}
VAE_MODES = ("vae", "vae_decoder")
ONLINE_MODES = ("grpo", "nft")  # RL on the policy's own samples (rollout.py)


def build_objective(cfg, accelerator=None) -> Objective:
    """The objective a run trains with: the VAE objective for the VAE modes, else `objective.name`. Takes the whole
    Config (or, as before, its objective section)."""
    train = getattr(cfg, "train", None)
    if train is not None and train.mode in VAE_MODES:
        from .vae import VAEObjective

        return VAEObjective.from_config(cfg, accelerator)
    if train is not None and train.mode == "dpo":
        from .dpo import DPO

        return DPO.from_config(cfg, accelerator)
    if train is not None and train.mode in ONLINE_MODES:
        from .grpo import GRPO
        from .nft import NFT

        return {"grpo": GRPO, "nft": NFT}[train.mode].from_config(cfg, accelerator)
    c = getattr(cfg, "objective", cfg)
    return OBJECTIVES[c.name].from_config(c)


__all__ = ["Objective", "FlowMatching", "loss_weight", "sample_sigmas", "OBJECTIVES", "VAE_MODES", "ONLINE_MODES",
           "build_objective"]
