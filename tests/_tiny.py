"""Tiny random stand-ins for the three Qwen-Image components, built with the reference libraries themselves
(diffusers, transformers), plus the small shims the reference needs on this machine. Shared by the text encoder,
pipeline and CLI tests."""
import contextlib
import json
import os

import numpy as np
import torch

from qwenimage.qwenimage_core.text_encoder import bundled_tokenizer_dir

TOKENIZER_DIR = str(bundled_tokenizer_dir())  # the real Qwen2.5 tokenizer, shipped in the package
OFFICIAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "official_configs.json")
TE_HIDDEN = 64


def official(section: str) -> dict:
    with open(OFFICIAL, encoding="utf-8") as fh:
        return {k: v for k, v in json.load(fh)[section].items() if not k.startswith("_")}


def tiny_te_config(vocab_size):
    import transformers

    return transformers.Qwen2_5_VLConfig(
        text_config=dict(hidden_size=TE_HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab_size, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6}),
        vision_config=dict(depth=2, hidden_size=32, out_hidden_size=TE_HIDDEN, intermediate_size=64, num_heads=2,
                           fullatt_block_indexes=[1]))


def perturb(module, std, seed, matrices_only=True):
    """Larger-than-init random weights, so every layer and position visibly matters in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not matrices_only or (name.endswith("weight") and p.dim() >= 2):
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def tiny_text_encoder(vocab_size, seed=0):
    import transformers

    torch.manual_seed(seed)
    model = transformers.Qwen2_5_VLForConditionalGeneration(tiny_te_config(vocab_size))
    return perturb(model, 0.1, seed).eval()


def tiny_vae(seed=0):
    """A Wan-2.1 VAE with the official depth (8x down, 16 latent channels) but 8 base channels."""
    import diffusers

    cfg = official("vae")
    cfg.update(base_dim=8, num_res_blocks=1)
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKLQwenImage(**cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
    return vae.eval()


def tiny_transformer(seed=0, **flags):
    import diffusers

    from qwenimage.qwenimage_core import preset

    cfg = preset("tiny", joint_attention_dim=TE_HIDDEN, **flags)
    kwargs = {k: v for k, v in cfg.to_dict().items() if k != "_class_name"}
    torch.manual_seed(seed)
    return perturb(diffusers.QwenImageTransformer2DModel(**kwargs), 0.1, seed, matrices_only=False).eval()


def official_scheduler():
    import diffusers

    return diffusers.FlowMatchEulerDiscreteScheduler(**official("scheduler"))


@contextlib.contextmanager
def no_processor_class_check():
    """transformers' Qwen2VLProcessor refuses to build without torchvision (it checks its video processor class);
    the image half, all these tests use, does not need it."""
    from transformers.processing_utils import ProcessorMixin

    orig = ProcessorMixin.check_argument_for_proper_class
    ProcessorMixin.check_argument_for_proper_class = lambda self, *a, **k: None
    try:
        yield
    finally:
        ProcessorMixin.check_argument_for_proper_class = orig


def reference_processor(tokenizer, image_processor):
    import transformers

    with no_processor_class_check():
        return transformers.Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)


class ForwardTokenTypes(torch.nn.Module):
    """The reference's text encoder with the diffusers#14194 fix: it forwards `mm_token_type_ids` (1 on image
    tokens) so transformers 5 builds Qwen2.5-VL's 3D rotary positions, as transformers 4 always did."""

    def __init__(self, inner, image_token_id):
        super().__init__()
        self.inner = inner
        self.image_token_id = image_token_id

    @property
    def dtype(self):
        return self.inner.dtype

    @property
    def device(self):
        return self.inner.device

    def forward(self, input_ids=None, **kwargs):
        return self.inner(input_ids=input_ids, mm_token_type_ids=(input_ids == self.image_token_id).long(), **kwargs)


def rand_image(w, h, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def smooth_image(w, h, seed):
    """A smooth random picture (low-frequency colour fields), closer to what VAEs see than white noise."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, 4, 4, generator=g)
    big = torch.nn.functional.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    return Image.fromarray((big[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def random_tiny_transformer(seed=0, std=0.2):
    """Our tiny MMDiT with N(0, std) in every parameter (no zero-initialised layer hides a bug)."""
    from qwenimage.qwenimage_core import QwenImageTransformer, preset

    torch.manual_seed(seed)
    m = QwenImageTransformer(preset("tiny"))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, std)
    return m.eval()
