"""GRPO on flow models (Flow-GRPO, arXiv 2505.05470): the PPO clipped-ratio loss on the sampler's own stochastic
steps, with group-normalised advantages and a KL to the reference.

For a recorded step x_t -> x_{t-1} with log-probability logp_old (the rollout policy's), the current policy gives
logp by re-predicting the velocity at x_t (with the same true CFG) and scoring the same x_{t-1}:
    ratio = exp(logp - logp_old),   L = max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)) + beta KL(step || ref step),
the KL exact between the two Gaussian steps (same std, means from the policy's and the reference's velocity).
On an on-policy step (the rollouts' policy is the current one) the ratio is exactly 1."""
from __future__ import annotations

import torch

from ...qwenimage_core.sampling import Conditioning, predict_velocity
from ...qwenimage_core.sde import sde_step, step_kl, step_mean
from .rollout import OnlineObjective


class GRPO(OnlineObjective):
    @classmethod
    def from_config(cls, cfg, accelerator=None) -> "GRPO":
        return cls(cfg, accelerator)

    def trained_timesteps(self) -> int:
        r = self.rl
        return r.sde_window or max(1, int((r.steps - 1) * r.timestep_fraction))

    def uses_reference(self) -> bool:
        return self.rl.beta > 0

    def velocity(self, model, batch) -> torch.Tensor:
        """The velocity at the recorded x_t, with CFG when the rollouts used it and rl.train_cfg is on."""
        x = batch["states"]
        cond = Conditioning(batch["embeds"].to(x.dtype), batch["mask"])
        uncond = None
        if self.rl.train_cfg and "neg_embeds" in batch:
            uncond = Conditioning(batch["neg_embeds"].to(x.dtype), batch["neg_mask"])
        return predict_velocity(model, x, batch["sigma"], cond, uncond=uncond, cfg=self.rl.cfg,
                                img_shapes=self.img_shapes(x.shape[0]))

    def loss(self, model, batch, generators):
        r = self.rl
        v_ref = None
        if r.beta > 0:  # first: a refreshed reference is swapped into the adapters in place, then restored
            with torch.no_grad(), self.reference.model(model) as ref:
                v_ref = self.velocity(ref, batch)
        v = self.velocity(model, batch)
        st = sde_step(batch["states"], v, batch["sigma"], batch["sigma_next"], noise_level=r.noise_level,
                      kind=r.sampler, sigma_max=float(self.sigmas[1]), prev=batch["nexts"])
        ratio = torch.exp(st.log_prob - batch["log_probs"].float())
        adv = batch["advantage"].float()
        policy = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - r.clip_range, 1 + r.clip_range))
        logs = {"ratio": ratio.mean().item(), "ratio_dev": (ratio - 1).abs().max().item(),
                "clip_frac": ((ratio - 1).abs() > r.clip_range).float().mean().item(), **self.stats}
        if v_ref is not None:
            mean_ref = step_mean(batch["states"], v_ref, batch["sigma"], batch["sigma_next"], st.std, r.sampler)
            kl = step_kl(st.mean, mean_ref, st.std)
            logs["kl"] = kl.mean().item()
            return policy + r.beta * kl, logs
        return policy, logs
