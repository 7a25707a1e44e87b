"""Flow-DPO, the report's preference objective for a flow-matching model:

    L = -log sigmoid(-beta/2 * ((e_w - e_w_ref) - (e_l - e_l_ref))),   e = mean ||v(x_t) - (eps - x0)||^2

per pair of a chosen (w) and a rejected (l) image of one prompt, both noised with the same eps at the same
timestep, e_ref the reference model's error (training/objectives/reference.py). The argument of the sigmoid is
the implicit reward margin: positive when the policy has improved on the chosen image more than on the rejected
one, relative to the reference. Flow-GRPO's Flow-DPO script and Diffusion-DPO take this form (beta 100 there on
velocity errors; Diffusion-DPO 5000 on noise errors), with a constant beta over the timesteps.

Why the default beta is 2, not 100: Adam's step is set by the learning rate, not by the gradient's scale, so beta
does not change the direction or size of the first updates; it only sets how soon the sigmoid saturates and the
gradient dies. Steering a sample from the loser all the way to the winner changes e_w - e_l by about the pair's
mean squared latent distance d^2 (0.2 when only a shape's colour differs, about 2 for two unrelated images), so
the margin at that point is about beta * d^2 / 2. With beta 100 it reaches 5 (loss 0.007) long before: in
bench/bench_dpo.py the loss fell 0.69 -> 0.01 in 3 steps and little was learnt after; the margin came mostly
from low- and mid-noise draws, where x_t itself tells the pair apart and the loser can simply be denoised worse,
which moves samples little. Beta 1-5 keeps the loss above 0.5 for the first 5 steps, so learning goes on
(BENCHMARKS.md: at lr 1e-3 beta 100 had moved the samples within its 3 steps; at a smaller lr 3 steps
move little).

DPO alone may raise the chosen image's error too, as long as the rejected one's rises more: on the demo model the
samples then drift (backgrounds tinted, shapes smeared at beta 2; gray, shapes lost at beta 10). `sft` adds the
chosen image's flow-matching loss, sft * e_w (as RPO adds the chosen answer's NLL to DPO): with 1, the default,
the same run drew clean blue shapes on the right backgrounds (corner pixels moved 19/255 on average, not 41)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Objective
from .flow_matching import FlowMatching, velocity_error
from .reference import Reference


class DPO(Objective):
    def __init__(self, flow: FlowMatching, reference: Reference, beta: float = 2.0, sft: float = 1.0):
        self.flow, self.reference, self.beta, self.sft = flow, reference, beta, sft
        self.step, self.refreshed_at, self.seen = 0, -1, []

    @classmethod
    def from_config(cls, cfg, accelerator=None) -> "DPO":
        device = accelerator.device if accelerator is not None else None
        unwrap = accelerator.unwrap_model if accelerator is not None else (lambda m: m)
        return cls(FlowMatching.from_config(cfg.objective), Reference(cfg, device, unwrap), cfg.dpo.beta,
                   cfg.dpo.sft)

    def margins(self, model, batch, generators) -> torch.Tensor:
        """The implicit reward margins [B] of the batch's pairs (the sigmoid's argument); the policy's errors on the
        chosen images are kept in self.chosen_error (the sft term's)."""
        b = batch["latents"].shape[0]
        eps, sigma = self.flow.noise(batch["latents"], generators)  # one draw per pair: shared by its two images
        x0 = torch.cat([batch["latents"], batch["rejected"]])
        two = lambda t: torch.cat([t, t])  # noqa: E731
        args = (two(eps), two(sigma), two(batch["embeds"]), two(batch["mask"]),
                [two(r) for r in batch.get("references") or []])
        with torch.no_grad(), self.reference.model(model) as ref:  # first: a LoRA swap writes the adapters
            e_ref = velocity_error(ref, x0, *args)
        e = velocity_error(model, x0, *args)  # one forward for both halves (one DDP pass)
        self.chosen_error = e[:b]
        return -self.beta / 2 * ((e[:b] - e_ref[:b]) - (e[b:] - e_ref[b:]))

    def loss(self, model, batch, generators):
        if self.reference.due(self.step) and self.refreshed_at != self.step:  # online: before this step's passes
            self.reference.refresh(model)
            self.refreshed_at = self.step
        margin = self.margins(model, batch, generators)
        self.seen.append(margin.detach().float())
        seen = torch.cat(self.seen)  # logged over the step's micro-batches so far (the engine logs the last)
        logs = {"dpo/accuracy": (seen > 0).float().mean().item(), "dpo/margin": seen.mean().item()}
        if not self.sft:
            return -F.logsigmoid(margin), logs
        logs["dpo/sft"] = self.chosen_error.mean().item()
        return -F.logsigmoid(margin) + self.sft * self.chosen_error, logs

    def begin_step(self, step: int) -> None:
        self.step, self.seen = step, []

    def state_dict(self) -> dict:
        weights = self.reference.state_dict()
        return {"weights": weights, "optimizer": None} if weights else {}

    def load_state_dict(self, state: dict) -> None:
        self.reference.load_state_dict(state["weights"])
