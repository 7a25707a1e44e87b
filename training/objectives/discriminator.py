"""A patch discriminator (pix2pix's PatchGAN, as the LDM/taming autoencoders train with) and its hinge losses.

Each output logit judges one receptive-field patch of the image as real or reconstructed. GroupNorm stands in for
BatchNorm, so a sample's logits do not depend on the rest of its batch (nor on how a batch is split over
processes)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchDiscriminator(nn.Sequential):
    """conv 4x4 stride 2 + LeakyReLU, then `layers` - 1 more stride-2 and one stride-1 conv (width doubling up to
    8x), each with GroupNorm + LeakyReLU, then a 1-channel conv: logits (B, 1, h, w)."""

    def __init__(self, channels: int = 64, layers: int = 3, in_channels: int = 3):
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        width = channels
        for n in range(1, layers + 1):
            out = channels * min(2 ** n, 8)
            mods += [nn.Conv2d(width, out, 4, 2 if n < layers else 1, 1, bias=False),
                     nn.GroupNorm(min(32, out // 4) or 1, out), nn.LeakyReLU(0.2, True)]
            width = out
        mods.append(nn.Conv2d(width, 1, 4, 1, 1))
        super().__init__(*mods)
        for m in self.modules():  # pix2pix's init: N(0, 0.02) convolutions
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: mean(relu(1 - D(real))) + mean(relu(1 + D(fake))), halved."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The autoencoder's adversarial term per image: -D(reconstruction), averaged over patches."""
    return -fake_logits.flatten(1).mean(1)


def adaptive_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """LDM's balance: ||d rec / d last|| / ||d gan / d last|| at the decoder's last layer, so the adversarial
    gradient there is as large as the reconstruction's whatever their scales."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, max_weight).detach()
