"""Online RL's data: groups of samples of the current policy, scored by the rewards, with advantages normalised
within each prompt's group. The objectives that learn from them (grpo.py, nft.py) subclass `OnlineObjective`.

An iteration is `rl.groups` prompts x `rl.group_size` samples, split evenly over the processes (a group may
straddle two: the rewards are gathered before the advantages are computed). Every sample is drawn through the
core's one sampler (`pipeline.sample`) with the stochastic step recording what it took, from its own generator
seeded by (seed, iteration, place in the iteration), so the samples do not depend on the number of processes.
The engine then takes ordinary optimiser steps over the iteration: micro-batches of `data.batch_size` samples at
one trained timestep each, accumulated over every trained timestep (and `train.grad_accum` minibatches)."""
from __future__ import annotations

import logging

import torch

from ...qwenimage_core.pipeline import QwenImage, sample, sigmas_for
from ...qwenimage_core.sampling import Conditioning
from ...qwenimage_core.schedules import euler_step
from ...qwenimage_core.sde import sde_step
from ..config import ConfigError
from ..data.prompts import load_prompts
from ..rewards.base import WeightedSum
from .base import Objective

log = logging.getLogger("qwenimage.training")
PROMPTS, ROLLOUT, ORDER, WINDOW, EXTRA = range(1, 6)  # the streams' tags in seeds (ints: str hashes vary by process)


def seed_of(*parts: int) -> int:
    return hash(tuple(parts)) % 2 ** 63


def group_advantages(rewards: torch.Tensor, group_size: int, global_std: bool, clip: float) -> torch.Tensor:
    """(r - mean of its group) / (std + 1e-4), the std of the group or of all rewards (Flow-GRPO's global_std),
    clipped to +-clip. rewards [groups * group_size], group-major."""
    r = rewards.double().view(-1, group_size)
    std = rewards.double().std(unbiased=False) if global_std else r.std(dim=1, unbiased=False, keepdim=True)
    return ((r - r.mean(dim=1, keepdim=True)) / (std + 1e-4)).clamp(-clip, clip).float().reshape(-1)


def encode_padded(te, texts, chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt states [N, L, D] and masks [N, L] on the CPU, encoded a chunk at a time, zero-padded to one length."""
    parts = [te.encode(texts[i:i + chunk]) for i in range(0, len(texts), chunk)]
    length = max(e.shape[1] for e, _ in parts)
    embeds = torch.cat([torch.nn.functional.pad(e.cpu(), (0, 0, 0, length - e.shape[1])) for e, _ in parts])
    mask = torch.cat([torch.nn.functional.pad(m.cpu(), (0, length - m.shape[1])) for _, m in parts])
    return embeds, mask


class Recorder:
    """The sampler's step hook: the stochastic step at `sde_steps` (the Euler step elsewhere), keeping at each the
    latents it started from, the latents it drew and their log-probability."""

    def __init__(self, rl, sde_steps, sigma_max: float, generators):
        self.rl, self.sde_steps, self.sigma_max, self.generators = rl, set(sde_steps), sigma_max, generators
        self.states, self.nexts, self.log_probs = {}, {}, {}

    def __call__(self, i, x, v, sigma, sigma_next):
        if i not in self.sde_steps:
            return euler_step(x, v, sigma, sigma_next)
        noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in self.generators]).to(x.device)
        st = sde_step(x, v, sigma, sigma_next, noise_level=self.rl.noise_level, kind=self.rl.sampler,
                      sigma_max=self.sigma_max, noise=noise)
        self.states[i], self.nexts[i], self.log_probs[i] = x.detach(), st.prev, st.log_prob
        return st.prev.to(x.dtype)


class OnlineObjective(Objective):
    """Rollouts, rewards and advantages; the subclass says which timesteps it trains (`train_steps`) and how
    (`loss`). The objective is also the engine's dataset for its stage (`data`)."""

    records_steps = True  # GRPO trains on the sampler's own steps; NFT only on the final latents

    def __init__(self, cfg, accelerator):
        self.cfg, self.rl, self.acc = cfg, cfg.rl, accelerator
        try:
            self.rewards = WeightedSum(cfg.rl.rewards)
        except ValueError as e:
            raise ConfigError(f"rl.rewards: {e}") from None
        world, bs, r = accelerator.num_processes, cfg.data.batch_size, cfg.rl
        total = r.groups * r.group_size
        if total % (world * bs):
            raise ConfigError(f"rl.groups x rl.group_size ({total} samples) must split into minibatches of "
                              f"data.batch_size ({bs}) on each of {world} process(es)")
        self.local = total // world
        minibatches = self.local // bs * r.inner_epochs
        if minibatches % cfg.train.grad_accum:
            raise ConfigError(f"train.grad_accum ({cfg.train.grad_accum}) must divide the {minibatches} minibatches "
                              "of an iteration (rl.groups x rl.group_size / processes / data.batch_size x "
                              "rl.inner_epochs)")
        self.steps_per_iteration = minibatches // cfg.train.grad_accum
        self.timesteps = self.trained_timesteps()
        self.sigmas = sigmas_for(r.steps, r.width, r.height)
        self.iteration, self.buffer, self.stats = -1, {}, {}
        self.prompts = self.vae = None
        self.reference = None
        if self.uses_reference():
            from .reference import Reference

            self.reference = Reference(cfg, accelerator.device, accelerator.unwrap_model)

    # -- what the subclass decides ------------------------------------------------------------------------
    def trained_timesteps(self) -> int:
        """How many micro-batches each minibatch is trained at (its timesteps)."""
        raise NotImplementedError

    def uses_reference(self) -> bool:
        return False

    def annotate(self, model) -> None:
        """After a rollout: anything the objective needs from the rollout policy (NFT: its predictions)."""

    # -- the engine's hooks -------------------------------------------------------------------------------
    def data(self, cfg, stage, encoders, accelerator):
        """(dataset, sampler) of a stage: the prompts, encoded once (one padded length for all, so a sample's
        conditioning is the same tensor in its rollout and in training), and the micro-batch order."""
        rows = load_prompts(stage.data or cfg.data.path)
        vae, te = encoders.get()
        self.vae = vae
        with torch.no_grad():
            embeds, mask = encode_padded(te, [r["prompt"] for r in rows])
            neg = te.encode([self.rl.negative_prompt]) if self.rl.cfg > 1 else (None, None)
        self.prompts = {"rows": rows, "embeds": embeds, "mask": mask,
                        "neg_embeds": None if neg[0] is None else neg[0].cpu(),
                        "neg_mask": None if neg[1] is None else neg[1].cpu()}
        return self, RolloutSampler(self)

    def micro_batches(self, grad_accum: int) -> int:
        return grad_accum * self.timesteps

    def collect(self, model, step: int) -> None:
        """Fresh rollouts of the current policy when the engine starts an iteration (none after a resume
        mid-iteration: the checkpoint holds the iteration's rollouts)."""
        k = step // self.steps_per_iteration
        if k != self.iteration:
            self.rollout(model, k)

    # -- an iteration's rollouts --------------------------------------------------------------------------
    def window(self, k: int) -> tuple[list[int], list[int]]:
        """(stochastic steps, trained steps) of iteration k: an SDE window at a random start (Flow-GRPO-Fast) or
        sliding from the early, noisy steps to later ones as training goes on (MixGRPO's progressive window), or
        every step but the last (whose Gaussian is too sharp) with its first fraction trained."""
        r = self.rl
        if r.sde_window:
            lo, hi = r.sde_window_range
            if r.sde_window_schedule == "progressive":
                start = min(lo + (k // r.sde_window_every) * r.sde_window_stride, hi - r.sde_window)
            else:
                g = torch.Generator().manual_seed(seed_of(self.cfg.train.seed, WINDOW, k))
                start = int(torch.randint(lo, hi - r.sde_window + 1, (), generator=g))
            steps = list(range(start, start + r.sde_window))
            return steps, steps
        steps = list(range(r.steps - 1)) if r.noise_level > 0 else []
        return steps, steps[:self.timesteps] if self.records_steps else []

    @torch.no_grad()
    def rollout(self, model, k: int) -> None:
        cfg, r, acc = self.cfg, self.rl, self.acc
        model = acc.unwrap_model(model)
        n_prompts = len(self.prompts["rows"])
        g = torch.Generator().manual_seed(seed_of(cfg.train.seed, PROMPTS, k))
        chosen = (torch.randperm(n_prompts, generator=g)[:r.groups] if r.groups <= n_prompts
                  else torch.randint(n_prompts, (r.groups,), generator=g))
        first = acc.process_index * self.local  # this process's samples: [first, first + local) of the iteration
        places = list(range(first, first + self.local))
        pids = torch.stack([chosen[j // r.group_size] for j in places])
        sde_steps, trained = self.window(k)
        states, nexts, log_probs, finals, images = [], [], [], [], []
        bs = cfg.data.batch_size
        for at in range(0, self.local, bs):
            gens = [torch.Generator().manual_seed(seed_of(cfg.train.seed, ROLLOUT, k, j)) for j in places[at:at + bs]]
            rec = Recorder(r, sde_steps, float(self.sigmas[1]), gens)
            cond, uncond = self.conditioning(pids[at:at + bs])
            with acc.autocast():
                z = sample(model, cond, uncond, width=r.width, height=r.height, steps=r.steps, cfg=r.cfg, seed=gens,
                           batch=len(gens), device=acc.device, step=rec)
            finals.append(z.float().cpu())
            if trained:
                states.append(torch.stack([rec.states[i] for i in trained], 1).cpu())
                nexts.append(torch.stack([rec.nexts[i] for i in trained], 1).cpu())
                log_probs.append(torch.stack([rec.log_probs[i] for i in trained], 1).cpu())
            images += QwenImage(model, self.vae, None).decode(z, r.width, r.height)  # the pipeline's decode
        rows = [self.prompts["rows"][int(p)] for p in pids]
        local = torch.tensor(self.rewards(images, [row["prompt"] for row in rows],
                                          [{k2: v for k2, v in row.items() if k2 != "prompt"} for row in rows]))
        everyone = acc.gather(local.to(acc.device)).cpu()  # the whole iteration, in place order
        adv = group_advantages(everyone, r.group_size, r.global_std, r.adv_clip_max)[first:first + self.local]
        self.iteration = k
        self.buffer = {"prompt": pids, "reward": local.float(), "advantage": adv, "latents": torch.cat(finals)}
        if trained:
            self.buffer.update(states=torch.cat(states), nexts=torch.cat(nexts), log_probs=torch.cat(log_probs),
                               sigmas=torch.stack([self.sigmas[trained], self.sigmas[[i + 1 for i in trained]]], 1))
        details = {f"reward/{n}": sum(v) / len(v) for n, v in self.rewards.details.items()}
        self.stats = {"reward": everyone.mean().item(), "reward_std": everyone.std(unbiased=False).item(),
                      "reward_min": everyone.min().item(), "reward_max": everyone.max().item(), "iteration": k,
                      **details}
        log.info("rollout %d: mean reward %.4f (std %.4f) over %d samples", k, self.stats["reward"],
                 self.stats["reward_std"], len(everyone))
        self.annotate(model)

    def conditioning(self, pids) -> tuple[Conditioning, Conditioning | None]:
        p = self.prompts
        cond = Conditioning(p["embeds"][pids], p["mask"][pids])
        if p["neg_embeds"] is None:
            return cond, None
        n = len(pids)
        return cond, Conditioning(p["neg_embeds"].expand(n, -1, -1), p["neg_mask"].expand(n, -1))

    # -- the engine's micro-batches -----------------------------------------------------------------------
    def micro_batch(self, position: int) -> list[tuple[int, int]]:
        """The position-th micro-batch: [(sample, timestep)], one timestep for all. Per iteration: inner epochs,
        each a fresh order of the samples in minibatches, each minibatch at every trained timestep in turn."""
        bs, n_t = self.cfg.data.batch_size, self.timesteps
        per_epoch = self.local // bs * n_t
        k, rest = divmod(position, per_epoch * self.rl.inner_epochs)
        epoch, rest = divmod(rest, per_epoch)
        mb, t = divmod(rest, n_t)
        g = torch.Generator().manual_seed(seed_of(self.cfg.train.seed, ORDER, k, epoch))
        order = torch.randperm(self.local, generator=g)[mb * bs:(mb + 1) * bs].tolist()
        return [(i, t) for i in order]

    def batch(self, idx, generators) -> dict:
        """The tensors of a micro-batch (the engine moves them to the device)."""
        i = torch.tensor([s for s, _ in idx])
        t = idx[0][1]
        cond, uncond = self.conditioning(self.buffer["prompt"][i])
        out = {"embeds": cond.embeds, "mask": cond.mask, "advantage": self.buffer["advantage"][i], "timestep": t,
               "latents": self.buffer["latents"][i]}
        if uncond is not None:
            out.update(neg_embeds=uncond.embeds, neg_mask=uncond.mask)
        for key in ("states", "nexts", "log_probs", "nft_xt", "nft_t", "nft_v_old"):
            if key in self.buffer:
                out[key] = self.buffer[key][i, t]
        if "sigmas" in self.buffer:
            out["sigma"], out["sigma_next"] = self.buffer["sigmas"][t]
        return out

    def img_shapes(self, n: int):
        return [[(1, self.rl.height // 16, self.rl.width // 16)]] * n

    # -- validation and checkpoints -----------------------------------------------------------------------
    def score(self, images, prompts) -> list[float]:
        """The rewards of validation images (held-out prompts)."""
        return self.rewards(images, prompts)

    def state_dict(self) -> dict:
        weights = {f"buffer.{k}": v for k, v in self.buffer.items()}
        if self.reference is not None:
            weights.update({f"reference.{k}": v for k, v in self.reference.state_dict().items()})
        return {"weights": weights, "optimizer": {"iteration": self.iteration, "stats": self.stats}}

    def load_state_dict(self, state: dict) -> None:
        w = state["weights"]
        self.buffer = {k[len("buffer."):]: v for k, v in w.items() if k.startswith("buffer.")}
        if self.reference is not None:
            self.reference.load_state_dict({k[len("reference."):]: v for k, v in w.items()
                                            if k.startswith("reference.")})
        self.iteration, self.stats = state["optimizer"]["iteration"], dict(state["optimizer"]["stats"])


class RolloutSampler:
    """The engine's sampler over an online objective: micro-batch after micro-batch, its position checkpointed."""

    def __init__(self, objective: OnlineObjective):
        self.objective, self.position = objective, 0

    def __iter__(self):
        while True:
            self.position += 1
            yield self.objective.micro_batch(self.position - 1)

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
