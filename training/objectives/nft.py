"""DiffusionNFT (arXiv 2509.16117): RL on the forward process, on the same rollouts and rewards as GRPO but with
no log-probabilities, so any sampler (the ODE included) and no CFG while training.

Each rollout's final latents x0 are noised afresh, x_t = (1 - t) x0 + t eps, and the rollout policy's velocity
v_old there is kept. Two implicit policies around it, v+ = b v + (1 - b) v_old and v- = (1 + b) v_old - b v,
are trained towards x0 in proportion to the reward: with r = clip(A)/(2 A_max) + 1/2 in [0, 1],
    L = A_max / b * [ r ||x0(v+) - x0||^2 / w+  +  (1 - r) ||x0(v-) - x0||^2 / w- ] + kl ||v - v_ref||^2,
x0(v) = x_t - t v, each term divided by its own detached mean absolute error w (the paper's adaptive weight).
A good sample pulls v towards predicting it; a bad one pushes v away through the negative policy.
Here v_old is the policy as it was at the rollout (the paper keeps a slower-moving sampling policy)."""
from __future__ import annotations

import torch

from ...qwenimage_core.sampling import Conditioning, predict_velocity
from .rollout import EXTRA, OnlineObjective, seed_of


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


class NFT(OnlineObjective):
    records_steps = False

    @classmethod
    def from_config(cls, cfg, accelerator=None) -> "NFT":
        return cls(cfg, accelerator)

    def trained_timesteps(self) -> int:
        return self.rl.nft_timesteps

    def uses_reference(self) -> bool:
        return self.rl.nft_kl > 0

    def velocity(self, model, x, t, batch) -> torch.Tensor:
        cond = Conditioning(batch["embeds"].to(x.dtype), batch["mask"])  # CFG-free, as DiffusionNFT trains
        return predict_velocity(model, x, t, cond, img_shapes=self.img_shapes(x.shape[0]))

    @torch.no_grad()
    def annotate(self, model) -> None:
        """Fresh noise points for each sample (from its own generator) and the rollout policy's velocity there."""
        x0, m, bs = self.buffer["latents"], self.timesteps, self.cfg.data.batch_size
        first = self.acc.process_index * self.local
        ts, xts = [], []
        for i in range(x0.shape[0]):
            g = torch.Generator().manual_seed(seed_of(self.cfg.train.seed, EXTRA, self.iteration, first + i))
            t = torch.rand(m, generator=g).clamp(0.02, 0.98)
            eps = torch.randn((m, *x0.shape[1:]), generator=g)
            ts.append(t)
            xts.append((1 - t.view(-1, 1, 1)) * x0[i] + t.view(-1, 1, 1) * eps)
        t, xt = torch.stack(ts), torch.stack(xts)  # [n, m], [n, m, S, 64]
        v_old = torch.empty_like(xt)
        dtype = self.acc.unwrap_model(model).dtype
        for at in range(0, len(xt), bs):
            batch = self.batch([(i, 0) for i in range(at, min(at + bs, len(xt)))], None)
            for j in range(m):
                with self.acc.autocast():
                    v = self.velocity(model, xt[at:at + bs, j].to(self.acc.device, dtype),
                                      t[at:at + bs, j].to(self.acc.device),
                                      {k: x.to(self.acc.device) for k, x in batch.items() if torch.is_tensor(x)})
                v_old[at:at + bs, j] = v.float().cpu()
        self.buffer.update(nft_t=t, nft_xt=xt, nft_v_old=v_old)

    def loss(self, model, batch, generators):
        r, b = self.rl, self.rl.nft_beta
        x0, xt, t, v_old = batch["latents"].float(), batch["nft_xt"].float(), batch["nft_t"], batch["nft_v_old"]
        dtype = next(p for p in model.parameters()).dtype
        v_ref = None
        if r.nft_kl > 0:
            with torch.no_grad(), self.reference.model(model) as ref:
                v_ref = self.velocity(ref, xt.to(dtype), t, batch).float()
        v = self.velocity(model, xt.to(dtype), t, batch).float()
        weight = ((batch["advantage"].float().clamp(-r.adv_clip_max, r.adv_clip_max) / r.adv_clip_max) / 2
                  + 0.5).clamp(0, 1)
        tt = t.float().view(-1, 1, 1)
        terms = []
        for v_side in (b * v + (1 - b) * v_old, (1 + b) * v_old - b * v):
            err = xt - tt * v_side - x0
            w = _mean(err.abs()).detach().clamp(min=1e-5)
            terms.append(_mean(err ** 2) / w)
        loss = r.adv_clip_max / b * (weight * terms[0] + (1 - weight) * terms[1])
        logs = {"nft_positive": terms[0].mean().item(), "nft_negative": terms[1].mean().item(), **self.stats}
        if v_ref is not None:
            kl = _mean((v - v_ref) ** 2)
            logs["kl"] = kl.mean().item()
            loss = loss + r.nft_kl * kl
        return loss, logs
