"""The VAE objective: reconstruction (L1 and/or L2), a KL term towards N(0, 1) when the encoder trains, an
LPIPS-style perceptual term when its weights are given, and an optional patch-GAN term (hinge loss) from the
step `gan_start` on, weighted adaptively as the LDM autoencoders are.

The objective owns its discriminator and that network's optimiser: the engine calls `loss` per micro-batch and
`end_step` after the autoencoder's optimiser step, where the discriminator takes its own step on the step's real
images and (detached) reconstructions."""
from __future__ import annotations

import torch

from .base import Objective
from .discriminator import PatchDiscriminator, adaptive_weight, generator_loss, hinge_d_loss
from .perceptual import PerceptualLoss

DISC_BETAS = (0.5, 0.9)  # the LDM/taming discriminator's


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


class VAEObjective(Objective):
    def __init__(self, *, l1=1.0, l2=0.0, kl=0.0, perceptual: PerceptualLoss | None = None, perceptual_weight=1.0,
                 sample_posterior=True, gan=0.0, gan_start=0, gan_adaptive=True, disc_lr=1e-4, disc_channels=64,
                 disc_layers=3, accelerator=None):
        self.l1, self.l2, self.kl, self.sample_posterior = l1, l2, kl, sample_posterior
        self.perceptual, self.perceptual_weight = perceptual, perceptual_weight
        self.gan, self.gan_start, self.gan_adaptive = gan, gan_start, gan_adaptive
        self.acc, self.step, self._pairs = accelerator, 0, []
        self.disc = self.disc_opt = None
        if gan > 0:
            disc = PatchDiscriminator(disc_channels, disc_layers)
            self.disc = accelerator.prepare_model(disc) if accelerator is not None else disc
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=disc_lr, betas=DISC_BETAS, weight_decay=0.0)
        device = accelerator.device if accelerator is not None else None
        if self.perceptual is not None and device is not None:
            self.perceptual.to(device)

    @classmethod
    def from_config(cls, cfg, accelerator=None) -> "VAEObjective":
        v = cfg.vae
        perceptual = PerceptualLoss.from_file(v.perceptual_weights) if v.perceptual_weights else None
        return cls(l1=v.l1, l2=v.l2, kl=v.kl if cfg.train.mode == "vae" else 0.0, perceptual=perceptual,
                   perceptual_weight=v.perceptual, sample_posterior=v.sample_posterior, gan=v.gan,
                   gan_start=v.gan_start, gan_adaptive=v.gan_adaptive, disc_lr=v.disc_lr,
                   disc_channels=v.disc_channels, disc_layers=v.disc_layers, accelerator=accelerator)

    @property
    def _disc_module(self):
        return self.acc.unwrap_model(self.disc) if self.acc is not None else self.disc

    def gan_active(self) -> bool:
        return self.disc is not None and self.step >= self.gan_start

    def begin_step(self, step: int) -> None:
        self.step, self._pairs = step, []

    def loss(self, model, batch, generators):
        x = batch["images"]
        recon, posterior = model(x, generator=generators, sample_posterior=self.sample_posterior)
        recon, target = recon.float(), x.float()
        rec = self.l1 * _per_sample((recon - target).abs()) + self.l2 * _per_sample((recon - target) ** 2)
        if self.perceptual is not None:
            rec = rec + self.perceptual_weight * self.perceptual(recon, target)
        loss, logs = rec, {"rec": rec.mean().item()}
        if self.kl:
            mean, logvar = posterior.mean.float(), posterior.logvar.float()
            kl = 0.5 * _per_sample(mean ** 2 + logvar.exp() - 1.0 - logvar)
            loss, logs["kl"] = loss + self.kl * kl, kl.mean().item()
        if self.gan_active():
            d = self._disc_module.requires_grad_(False)  # the autoencoder's term must not train the discriminator
            g = generator_loss(d(recon))
            d.requires_grad_(True)
            weight = self.gan
            if self.gan_adaptive and torch.is_grad_enabled():
                last = getattr(model, "module", model).decoder.conv_out.weight
                weight = weight * adaptive_weight(rec.mean(), g.mean(), last)
            loss, logs["g"], logs["gan_weight"] = loss + weight * g, g.mean().item(), float(weight)
            self._pairs.append((target.detach(), recon.detach()))
        return loss, logs

    def end_step(self, applied: bool) -> None:
        """The discriminator's step: hinge loss on this step's real images and reconstructions."""
        pairs, self._pairs = self._pairs, []
        if not applied or not pairs:
            return
        real = torch.cat([r for r, _ in pairs])
        fake = torch.cat([f for _, f in pairs])
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss = hinge_d_loss(self.disc(real), self.disc(fake))
        d_loss.backward()
        self.disc_opt.step()
        self.last_d_loss = d_loss.item()

    def state_dict(self) -> dict:
        if self.disc is None:
            return {}
        weights = {f"discriminator.{k}": v for k, v in self._disc_module.state_dict().items()}
        return {"weights": weights, "optimizer": self.disc_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.disc is None or not state:
            return
        prefix = "discriminator."
        self._disc_module.load_state_dict({k[len(prefix):]: v for k, v in state["weights"].items()
                                           if k.startswith(prefix)})
        self.disc_opt.load_state_dict(state["optimizer"])
