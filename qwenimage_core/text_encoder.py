"""The Qwen-Image text encoder: a frozen Qwen2.5-VL-7B read for its last hidden states.

Prompts are wrapped in a chat template, run through the language model (with the reference images' vision tokens
for the edit models), and the states of the last layer are kept without the template's fixed prefix (34 tokens
for text-to-image, 64 for the edit templates), split per sample by the attention mask and right-padded with
zeros to the longest sample, with a 0/1 mask beside them. This is what the reference (diffusers) pipelines'
`encode_prompt` computes.

Differences from the reference, on purpose (the tests pin both behaviours):

* Vision tokens get Qwen2.5-VL's 3D multimodal rotary positions. transformers 5 computes those only when the
  model is given `mm_token_type_ids`, which the diffusers pipelines do not pass (diffusers issue #14194), so with
  transformers 5 the reference silently falls back to 1D positions for the image tokens; the model was trained
  with transformers 4, which always computed the 3D ones. `multimodal_rope=False` reproduces the fallback.
* `num_images_per_prompt` repeats embeddings and mask alike (`repeat_interleave`); the reference repeats its
  mask in a different order than its embeddings when more than one prompt is batched.
* The mask is always returned; the reference returns None for it when it is all ones.

Vision inputs are built with `Qwen2VLImageProcessor`'s PIL/numpy implementation, never the torchvision one, and
each `<|image_pad|>` is expanded to one token per merged 2x2 patch here, so torchvision is never needed.

Weights load from a diffusers folder (`text_encoder/`, `tokenizer/`, `processor/`), a ComfyUI single file
(`qwen_2.5_vl_7b*.safetensors`: on-disk names without lm_head, possibly fp8 with `*.scale_weight`), or a ComfyUI
full checkpoint (the same names under `text_encoders.qwen25_7b.transformer.`). The model is built on the meta
device and every tensor is assigned straight from the memory-mapped file; pickled weights are never read.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from .checkpoint import folder_weight_files, read_json
from .images import calculate_dimensions
from .sampling import Interrupted
from .weights import (CheckpointError, SafetensorsFile, assign_weights, check_config_fits, check_parameter_count,
                      load_json, open_checkpoint_files)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- templates

T2I_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
_EDIT_SYSTEM = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n"
)
EDIT_TEMPLATE = _EDIT_SYSTEM + "<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n"
EDIT_PLUS_TEMPLATE = _EDIT_SYSTEM + "{}<|im_end|>\n<|im_start|>assistant\n"
EDIT_PLUS_IMAGE_PROMPT = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"

TEMPLATES = {"t2i": T2I_TEMPLATE, "edit": EDIT_TEMPLATE, "edit_plus": EDIT_PLUS_TEMPLATE}
# Tokens of the template's fixed prefix, dropped from the output (the system block and "<|im_start|>user\n").
DROP_TOKENS = {"t2i": 34, "edit": 64, "edit_plus": 64}
TOKENIZER_MAX_LENGTH = 1024  # prompt tokens after the prefix: the reference's text-to-image cap, and ours for all
IMAGE_TOKEN = "<|image_pad|>"

# Area the reference pipelines resize a reference image to before the vision tower (sides rounded to 32).
VISION_AREA = {"edit": 1024 * 1024, "edit_plus": 384 * 384}

# Qwen2.5-VL-7B-Instruct, as shipped in Qwen/Qwen-Image text_encoder/config.json (transformers 4 layout, which
# every transformers version reads).
QWEN25_VL_7B_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "image_token_id": 151655,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 128000,
    "max_window_layers": 28,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "video_token_id": 151656,
    "vision_config": {
        "depth": 32,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "hidden_act": "silu",
        "hidden_size": 1280,
        "in_channels": 3,
        "in_chans": 3,
        "intermediate_size": 3420,
        "model_type": "qwen2_5_vl",
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
        "window_size": 112,
    },
    "vision_end_token_id": 151653,
    "vision_start_token_id": 151652,
    "vision_token_id": 151654,
    "vocab_size": 152064,
}

# Qwen2.5-VL's preprocessor_config.json (the Qwen-Image `processor/` folder); used when none is found.
QWEN25_VL_IMAGE_PROCESSOR_CONFIG: dict[str, Any] = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "size": {"shortest_edge": 3136, "longest_edge": 12845056},
    "merge_size": 2,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
}

COMFY_CHECKPOINT_PREFIX = "text_encoders.qwen25_7b.transformer."
HUB_REPO = "Qwen/Qwen-Image"
# Keys of ComfyUI files that are flags or activation scales, not weights.
_MARKER_KEYS = {"scaled_fp8"}
_MARKER_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
_FP8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
             if hasattr(torch, n))


class TextEncoderLoadError(CheckpointError):
    """A text encoder (weights, tokenizer or config) that cannot be loaded; the message says which file/key."""


# --------------------------------------------------------------------------------------------- image helpers

def vision_size(width: int, height: int, template: str) -> tuple[int, int]:
    """The size a (width x height) reference image is resized to before the vision tower: ~1024x1024 area for
    "edit" (the edit pipeline's calculated size), ~384x384 for "edit_plus" (CONDITION_IMAGE_SIZE)."""
    if template not in VISION_AREA:
        raise ValueError(f"template {template!r} takes no images; expected one of {sorted(VISION_AREA)}")
    return calculate_dimensions(VISION_AREA[template], width / height)


def resize_for_vision(image, template: str):
    """Resize a PIL image (or a list of them) for the vision tower exactly as the reference pipeline does:
    Lanczos to `vision_size` (no RGB conversion here; the image processor does that)."""
    from PIL import Image

    if isinstance(image, (list, tuple)):
        return [resize_for_vision(i, template) for i in image]
    if not isinstance(image, Image.Image):
        raise TypeError(f"resize_for_vision takes PIL images, not {type(image).__name__}")
    w, h = vision_size(*image.size, template)
    return image.resize((w, h), resample=Image.LANCZOS)


def repeat_for_images(prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor | None, num_images_per_prompt: int):
    """Repeat each prompt's embeddings and mask `num_images_per_prompt` times, in place: [p0, p0, p1, p1, ...]."""
    if num_images_per_prompt == 1:
        return prompt_embeds, prompt_mask
    if num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be >= 1, not {num_images_per_prompt}")
    embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
    mask = None if prompt_mask is None else prompt_mask.repeat_interleave(num_images_per_prompt, dim=0)
    return embeds, mask


def image_processor_class():
    """Qwen2VLImageProcessor's PIL/numpy implementation (transformers 5: Qwen2VLImageProcessorPil; 4: the slow
    Qwen2VLImageProcessor), never the torchvision-backed one, so results do not depend on torchvision."""
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as cls
    except ImportError:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as cls
    return cls


def default_image_processor():
    """The image processor with Qwen2.5-VL's settings (min 3136, max 12845056 pixels, 14px patches, 2x2 merge)."""
    return image_processor_class().from_dict(dict(QWEN25_VL_IMAGE_PROCESSOR_CONFIG))


# ------------------------------------------------------------------------------------------------ the encoder

def cap_prompt(tokenizer, prompt: str, limit: int = TOKENIZER_MAX_LENGTH) -> str:
    """`prompt` cut after its first `limit` tokens, with a warning saying what was cut. The text-to-image reference
    truncates there; the edit templates did not, so a 100,000-character instruction ran the encoder for minutes.
    Only a window of the text is tokenized (growing when its tokens are long): tokenizing 1M characters takes
    longer than encoding 1,024 tokens."""
    if len(prompt) * 4 <= limit:  # a character is at most 4 byte-level tokens
        return prompt
    window = 8 * limit
    while True:
        part = prompt[:window]
        ends = [end for _, end in tokenizer(part, add_special_tokens=False, return_offsets_mapping=True)
                ["offset_mapping"]]
        if len(ends) > limit + 16 or window >= len(prompt):  # +16: the window's cut word does not reach `limit`
            break
        window *= 8
    if len(ends) <= limit:
        return prompt
    kept = prompt[:ends[limit - 1]]
    cut = prompt[len(kept):]
    log.warning("prompt cut to its first %d tokens (%d characters): %d characters dropped, from %r", limit,
                len(kept), len(cut), cut[:60] + ("..." if len(cut) > 60 else ""))
    return kept


@contextlib.contextmanager
def _interruptible(model, interrupt):
    """Check `interrupt()` before every decoder layer and vision block, so a long encode stops within one layer
    (Interrupted) as sampling does between steps."""
    if interrupt is None:
        yield
        return

    def check(module, args):
        if interrupt():
            raise Interrupted("interrupted while encoding the prompt")
    layers = [*model.language_model.layers, *getattr(model.visual, "blocks", [])]
    handles = [layer.register_forward_pre_hook(check) for layer in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _is_image_list(x) -> bool:
    return isinstance(x, (list, tuple))


class QwenTextEncoder:
    """A Qwen2.5-VL model, its tokenizer and image processor, encoding prompts as the Qwen-Image pipelines do.

    `model` is a transformers `Qwen2_5_VLModel` or a `Qwen2_5_VLForConditionalGeneration` (whose inner model is
    used, so the 152k-vocabulary head is never run). The model is frozen: call `encode` under no autograd."""

    def __init__(self, model, tokenizer, image_processor=None, *, multimodal_rope: bool = True):
        inner = model
        if not (hasattr(inner, "language_model") and hasattr(inner, "visual")):
            inner = getattr(model, "model", None)
            if inner is None or not (hasattr(inner, "language_model") and hasattr(inner, "visual")):
                raise TypeError(
                    f"expected a transformers Qwen2_5_VLModel or Qwen2_5_VLForConditionalGeneration (transformers "
                    f">= 4.52), got {type(model).__name__}")
        self.model = inner
        self.tokenizer = tokenizer
        self.image_processor = image_processor if image_processor is not None else default_image_processor()
        self.multimodal_rope = multimodal_rope
        self.execution_device = None  # set when the model's layers are offloaded (see `device`)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        cfg_id = getattr(inner.config, "image_token_id", None)
        if cfg_id is not None and cfg_id != self.image_token_id:
            raise ValueError(f"tokenizer maps {IMAGE_TOKEN} to {self.image_token_id} but the model expects {cfg_id}")
        self._takes_mm_types = "mm_token_type_ids" in inspect.signature(inner.forward).parameters

    # -- properties

    @property
    def device(self) -> torch.device:
        """Where inputs go: the weights' device, or the execution device of layer-wise offload (whose weights
        wait on the CPU or the meta device between uses)."""
        if self.execution_device is not None:
            return torch.device(self.execution_device)
        return self.model.language_model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.language_model.embed_tokens.weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.model.language_model.embed_tokens.weight.shape[1]

    def to(self, device=None, dtype=None) -> "QwenTextEncoder":
        """Move (and/or cast) the model; rotary buffers stay float32 as transformers keeps them."""
        for mod in self.model.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None:
                    t = p.data.to(device=device, dtype=dtype if (dtype is not None and p.is_floating_point()) else None)
                    mod._parameters[name] = torch.nn.Parameter(t, requires_grad=p.requires_grad)
            for name, b in list(mod._buffers.items()):
                if b is not None:
                    mod._buffers[name] = b.to(device=device)
        return self

    # -- inputs

    def _images_per_prompt(self, n_prompts: int, images, template: str) -> list[list]:
        if template == "t2i":
            if images is not None:
                raise ValueError("the t2i template takes no images; use template='edit' or 'edit_plus'")
            return [[] for _ in range(n_prompts)]
        if template == "edit":
            if images is None:
                raise ValueError("the edit template needs one reference image per prompt")
            if not _is_image_list(images):
                return [[images] for _ in range(n_prompts)]
            if len(images) == 1:
                images = list(images) * n_prompts
            if len(images) != n_prompts or any(_is_image_list(i) for i in images):
                raise ValueError(f"the edit template takes one image per prompt (or one for all): got "
                                 f"{len(images)} for {n_prompts} prompts")
            return [[i] for i in images]
        if template == "edit_plus":
            if images is None:
                return [[] for _ in range(n_prompts)]
            if not _is_image_list(images):
                return [[images] for _ in range(n_prompts)]
            if len(images) and all(_is_image_list(i) for i in images):
                if len(images) != n_prompts:
                    raise ValueError(f"per-prompt image lists: got {len(images)} lists for {n_prompts} prompts")
                return [list(i) for i in images]
            if any(_is_image_list(i) for i in images):
                raise ValueError("images must be a list of images (shared by all prompts) or one list per prompt")
            return [list(images) for _ in range(n_prompts)]
        raise ValueError(f"unknown template {template!r}; expected one of {sorted(TEMPLATES)}")

    def prepare_inputs(self, prompts: str | Sequence[str], images=None, template: str = "t2i",
                       resize_images: bool = False) -> dict[str, Any]:
        """Token ids, attention mask and vision inputs for `prompts`, on CPU (what `encode` feeds the model).

        Images: "edit" takes one image per prompt (a single image, or a list with one per prompt); "edit_plus"
        takes a list of images shared by every prompt (the reference's "Picture 1: ... Picture N:"), or one list
        per prompt. With `resize_images`, PIL images are first resized as the reference pipeline does
        (`resize_for_vision`); otherwise they are used as given (the reference's `encode_prompt` contract)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts")
        for p in prompts:
            if IMAGE_TOKEN in p:
                raise ValueError(f"prompt contains the reserved token {IMAGE_TOKEN}: {p[:80]!r}")
        prompts = [cap_prompt(self.tokenizer, p) for p in prompts]
        per_prompt = self._images_per_prompt(len(prompts), images, template)
        if resize_images and template in VISION_AREA:
            per_prompt = [[resize_for_vision(i, template) for i in imgs] for imgs in per_prompt]
        if template == "t2i":
            texts = [T2I_TEMPLATE.format(p) for p in prompts]
        elif template == "edit":
            texts = [EDIT_TEMPLATE.format(p) for p in prompts]
        else:
            texts = [EDIT_PLUS_TEMPLATE.format("".join(EDIT_PLUS_IMAGE_PROMPT.format(k + 1) for k in range(len(imgs)))
                                               + p) for p, imgs in zip(prompts, per_prompt)]

        flat = [img for imgs in per_prompt for img in imgs]
        out: dict[str, Any] = {"drop": DROP_TOKENS[template]}
        if flat:
            vision = self.image_processor(images=flat, return_tensors="pt")
            grid = torch.as_tensor(vision["image_grid_thw"])
            merge = int(getattr(self.image_processor, "merge_size", 2))
            counts = (grid.prod(-1) // merge ** 2).tolist()
            placeholder = "\x00QWENIMG\x00"
            k = 0
            for i, t in enumerate(texts):
                while IMAGE_TOKEN in t:
                    t = t.replace(IMAGE_TOKEN, placeholder * counts[k], 1)
                    k += 1
                texts[i] = t.replace(placeholder, IMAGE_TOKEN)
            out["pixel_values"] = torch.as_tensor(vision["pixel_values"])
            out["image_grid_thw"] = grid
        if template == "t2i":
            tok = self.tokenizer(texts, max_length=TOKENIZER_MAX_LENGTH + DROP_TOKENS[template], padding=True,
                                 truncation=True, return_tensors="pt")
        else:  # the reference's processor call: pad, never truncate (it would cut vision tokens)
            tok = self.tokenizer(texts, padding=True, return_tensors="pt")
        out["input_ids"], out["attention_mask"] = tok["input_ids"], tok["attention_mask"]
        if flat:
            n_tokens = int((out["input_ids"] == self.image_token_id).sum())
            if n_tokens != sum(counts):
                raise ValueError(f"{n_tokens} image tokens in the tokenized prompts but {sum(counts)} expected")
            out["mm_token_type_ids"] = (out["input_ids"] == self.image_token_id).long()
        return out

    # -- encoding

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str], images=None, template: str = "t2i",
               max_sequence_length: int = 1024, num_images_per_prompt: int = 1,
               resize_images: bool = False, interrupt=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds [B, L, hidden] in the model dtype, prompt_mask [B, L] long), as the reference's
        `encode_prompt` (template "t2i": QwenImagePipeline; "edit": QwenImageEditPipeline; "edit_plus":
        QwenImageEditPlusPipeline). B = len(prompts) * num_images_per_prompt; L is the longest prompt's length
        after the template prefix; shorter prompts are zero-padded with mask 0.

        `max_sequence_length` (<= 1024) caps L for "t2i"; the edit templates ignore it, as the reference does
        (their sequences hold the vision tokens and are never truncated). Every template's prompt is cut after
        1,024 tokens (`cap_prompt`, with a warning). `interrupt()` is checked before each layer: True stops with
        `Interrupted`. See `prepare_inputs` for `images`."""
        if max_sequence_length > TOKENIZER_MAX_LENGTH:
            raise ValueError(f"max_sequence_length cannot be greater than {TOKENIZER_MAX_LENGTH}, "
                             f"got {max_sequence_length}")
        inputs = self.prepare_inputs(prompts, images, template, resize_images=resize_images)
        device = self.device
        kwargs = {"input_ids": inputs["input_ids"].to(device), "attention_mask": inputs["attention_mask"].to(device)}
        if "pixel_values" in inputs:
            kwargs["pixel_values"] = inputs["pixel_values"].to(device)
            kwargs["image_grid_thw"] = inputs["image_grid_thw"].to(device)
            if self.multimodal_rope and self._takes_mm_types:
                kwargs["mm_token_type_ids"] = inputs["mm_token_type_ids"].to(device)
        with _interruptible(self.model, interrupt):
            hidden = self.model(**kwargs, use_cache=False, return_dict=True).last_hidden_state

        drop = inputs["drop"]
        mask = kwargs["attention_mask"].bool()
        parts = [h[m][drop:] for h, m in zip(hidden, mask)]
        length = max(p.shape[0] for p in parts)
        embeds = hidden.new_zeros(len(parts), length, hidden.shape[-1])
        prompt_mask = torch.zeros(len(parts), length, dtype=torch.long, device=hidden.device)
        for i, p in enumerate(parts):
            embeds[i, : p.shape[0]] = p
            prompt_mask[i, : p.shape[0]] = 1
        if template == "t2i":
            embeds, prompt_mask = embeds[:, :max_sequence_length], prompt_mask[:, :max_sequence_length]
        return repeat_for_images(embeds, prompt_mask, num_images_per_prompt)

    __call__ = encode


# ---------------------------------------------------------------------------------------------------- configs

def official_text_encoder_config():
    """The transformers `Qwen2_5_VLConfig` of Qwen-Image's text encoder (Qwen2.5-VL-7B-Instruct)."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig.from_dict(json.loads(json.dumps(QWEN25_VL_7B_CONFIG)))


def _as_config(config):
    from transformers import Qwen2_5_VLConfig

    if config is None:
        return official_text_encoder_config()
    if isinstance(config, Qwen2_5_VLConfig):
        return config
    if isinstance(config, dict):
        return Qwen2_5_VLConfig.from_dict(dict(config))
    p = Path(config)
    p = p / "config.json" if p.is_dir() else p
    try:
        return Qwen2_5_VLConfig.from_dict(load_json(p.read_bytes(), None))
    except Exception as e:  # OSError, bad JSON, and transformers' config validation (its own types)
        raise TextEncoderLoadError(f"{p}: cannot read the text encoder config: {e}") from None


# --------------------------------------------------------------------------------------------- weight loading

def disk_key_to_model_name(key: str) -> str:
    """On-disk name (save_pretrained / ComfyUI) -> `Qwen2_5_VLModel` parameter name. transformers 5 maps
    `^visual` -> `model.visual` and `^model.` -> `model.language_model.` for the ForConditionalGeneration; the
    inner model has the same names without the leading `model.`. Its own layouts are accepted too."""
    for src, dst in (("model.language_model.", "language_model."), ("model.visual.", "visual."),
                     ("language_model.", "language_model."), ("visual.", "visual."), ("model.", "language_model.")):
        if key.startswith(src):
            return dst + key[len(src):]
    return key


def model_name_to_disk_key(name: str) -> str:
    """`Qwen2_5_VLModel` parameter name -> the save_pretrained / ComfyUI on-disk name."""
    if name.startswith("language_model."):
        return "model." + name[len("language_model."):]
    return name


def _is_marker(name: str) -> bool:
    return (name in _MARKER_KEYS or name == "lm_head.weight" or name.endswith(_MARKER_SUFFIXES)
            or name.endswith(_SCALE_SUFFIXES))


def _build_empty_model(config):
    """`Qwen2_5_VLModel(config)` with parameters on the meta device and its (computed) rotary buffers real."""
    try:
        from transformers import Qwen2_5_VLModel, Qwen2_5_VLTextModel  # noqa: F401  (>= 4.52 layout)
    except ImportError as e:  # pragma: no cover - depends on the installed transformers
        raise ImportError("the Qwen-Image text encoder needs transformers >= 4.52 (Qwen2_5_VLModel with "
                          "language_model and visual)") from e
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = Qwen2_5_VLModel(config)
    return model


def _load_sources(model, sources: dict, *, dtype, device, what: str) -> None:
    """Assign `sources` ({model name: (file, key)}, including ComfyUI scale/marker entries) onto `model`."""
    params = dict(model.named_parameters())
    expected = set(params)
    missing = sorted(n for n in expected if n not in sources)
    if missing:  # named as on disk; with any shape mismatches, which say the config does not fit the file
        files = sorted({f.path for f, _ in sources.values()}) or ["<no file>"]
        where = files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} shards)"
        shown = ", ".join(repr(model_name_to_disk_key(n)) for n in missing[:12])
        more = f" and {len(missing) - 12} more" if len(missing) > 12 else ""
        msg = f"{where}: cannot load this {what}: missing keys: {shown}{more}"
        bad = [f"{k!r}: file has {list(f.shape(k))}, model expects {list(params[n].shape)}"
               for n, (f, k) in sources.items() if n in params and tuple(f.shape(k)) != tuple(params[n].shape)]
        if bad:
            msg += ("; shape mismatch (the config does not match the weights): " + "; ".join(bad[:6])
                    + (f" and {len(bad) - 6} more" if len(bad) > 6 else ""))
        raise TextEncoderLoadError(msg)
    for name in expected:
        f, key = sources[name]
        stored = f.dtype(key)
        if stored is not None and not stored.is_floating_point and stored != torch.bool:
            raise TextEncoderLoadError(f"{f.path}: tensor {key!r} is stored as {stored}: integer-quantized weights "
                                       f"are not supported (fp8 and float weights are)")
    scales = {n[: -len(s)] + ".weight": src for n, src in sources.items() for s in _SCALE_SUFFIXES if n.endswith(s)}
    for wname, (f, key) in scales.items():
        if wname not in sources:
            raise TextEncoderLoadError(f"{f.path}: scale {key!r} belongs to no weight in the file")

    def convert(name: str, t: torch.Tensor) -> torch.Tensor:
        scale = scales.get(name)
        if scale is None and t.dtype not in _FP8:
            return t
        t = t.to(torch.float32)
        if scale is not None:
            s = scale[0].get(scale[1]).to(torch.float32)
            try:
                t = t * s
            except RuntimeError:
                raise TextEncoderLoadError(f"{scale[0].path}: scale {scale[1]!r} of shape {list(s.shape)} does not "
                                           f"fit weight of shape {list(t.shape)}") from None
        return t

    # Non-persistent buffers (rotary inv_freq) are computed by the model, not read: keep them out of the way.
    held = []
    for mod in model.modules():
        for b in list(getattr(mod, "_non_persistent_buffers_set", ())):
            if b in mod._buffers:
                held.append((mod, b, mod._buffers.pop(b)))
    try:
        assign_weights(model, sources, dtype=dtype, device=device, ignore=_is_marker, convert=convert, what=what)
    finally:
        for mod, b, t in held:
            mod._buffers[b] = t.to(device if device is not None else "cpu")


def _default_dtype(sources: dict) -> torch.dtype:
    src = sources.get("language_model.embed_tokens.weight") or next(iter(sources.values()))
    stored = src[0].dtype(src[1]) or torch.bfloat16
    return torch.bfloat16 if stored.itemsize == 1 or not stored.is_floating_point else stored


CONFIG_METADATA_KEY = "qwen2_5_vl_config"  # safetensors metadata: the JSON config of a non-official encoder


def save_text_encoder_file(model, path: str | os.PathLike) -> None:
    """Write a Qwen2.5-VL model as a ComfyUI-style single file (ComfyUI's key names), with its config in the
    metadata so that a non-official size (a test model, a distilled encoder) loads back without being told."""
    from .weights import save_file_atomic

    inner = getattr(model, "model", model)  # a QwenTextEncoder or a ...ForConditionalGeneration: its Qwen2_5_VLModel
    config = getattr(model, "config", None) or inner.config
    tensors = {model_name_to_disk_key(n): t.detach().contiguous() for n, t in inner.state_dict().items()}
    save_file_atomic(tensors, path, {CONFIG_METADATA_KEY: config.to_json_string(use_diff=False)})


def _single_file_sources(path: Path) -> dict:
    if path.suffix.lower() in (".bin", ".pt", ".pth", ".ckpt", ".pkl"):
        raise TextEncoderLoadError(f"{path}: pickled weights are never loaded; use a .safetensors file")
    f = SafetensorsFile(path)
    keys = f.keys()
    prefixed = [k for k in keys if k.startswith(COMFY_CHECKPOINT_PREFIX)]
    if prefixed:
        pairs = [(k[len(COMFY_CHECKPOINT_PREFIX):], k) for k in prefixed]
    else:
        pairs = [(k, k) for k in keys]
    sources = {}
    for bare, key in pairs:
        sources[disk_key_to_model_name(bare)] = (f, key)
    if "language_model.embed_tokens.weight" not in sources:
        raise TextEncoderLoadError(
            f"{path}: not a Qwen2.5-VL text encoder: no 'model.embed_tokens.weight'"
            + (f" under {COMFY_CHECKPOINT_PREFIX!r}" if prefixed else
               f" (nor a ComfyUI checkpoint with keys under {COMFY_CHECKPOINT_PREFIX!r})"))
    return sources


def load_text_encoder_model(path: str | os.PathLike, device=None, dtype: torch.dtype | None = None, config=None):
    """Just the transformers `Qwen2_5_VLModel` (no lm_head), frozen, in eval mode. See `load_text_encoder`."""
    try:
        return _load_text_encoder_model(Path(path), device, dtype, config)
    except TextEncoderLoadError:
        raise
    except CheckpointError as e:  # from the shared safetensors reader: same message, this module's class
        raise TextEncoderLoadError(str(e)) from None


def _load_text_encoder_model(path: Path, device, dtype, config):
    if path.is_dir():
        te_dir = _text_encoder_folder(path)
        cfg = _as_config(config if config is not None else te_dir / "config.json")
        files = open_checkpoint_files(folder_weight_files(str(te_dir)))
        sources = {}
        for key, f in files.items():
            sources[disk_key_to_model_name(key)] = (f, key)
    elif path.is_file():
        sources = _single_file_sources(path)
        if config is None:  # a file we wrote may carry its config (ComfyUI files do not: Qwen2.5-VL-7B)
            try:
                config = next(iter(sources.values()))[0].metadata_json(CONFIG_METADATA_KEY)
            except CheckpointError as e:  # the loader's own error type, the same message
                raise TextEncoderLoadError(str(e)) from None
            if config is not None and not isinstance(config, dict):
                raise TextEncoderLoadError(f"{path}: metadata {CONFIG_METADATA_KEY!r} is not a JSON object")
        try:
            cfg = _as_config(config)
        except TextEncoderLoadError:
            raise
        except Exception as e:  # transformers' config validation raises its own types
            raise TextEncoderLoadError(f"{path}: the text encoder config is not usable: {e}") from None
    else:
        raise TextEncoderLoadError(f"{path}: no such file or folder")
    check_text_encoder_config(cfg, sources)
    if dtype is None:
        dtype = _default_dtype(sources)
    model = _build_empty_model(cfg)
    _load_sources(model, sources, dtype=dtype, device=device, what="Qwen2.5-VL text encoder")
    for f, _ in sources.values():
        f.close()
    return model.eval().requires_grad_(False)


def check_text_encoder_config(cfg, sources: dict) -> None:
    """The config (config.json or file metadata) against the weights' shapes, before building."""
    text, vision = cfg.text_config, cfg.vision_config
    try:
        check_config_fits("text encoder", sources, dims=[
            ("language_model.embed_tokens.weight", 0, "text_config.vocab_size", text.vocab_size),
            ("language_model.embed_tokens.weight", 1, "text_config.hidden_size", text.hidden_size),
            ("visual.patch_embed.proj.weight", 0, "vision_config.hidden_size", vision.hidden_size)],
            counts=[("language_model.layers.", "text_config.num_hidden_layers", text.num_hidden_layers),
                    ("visual.blocks.", "vision_config.depth", vision.depth)])
        # a lower bound (each text layer's query and output projections, each vision block's qkv and output):
        # transformers builds about 6 layers a second even on the meta device, so a file of stub layers with a
        # config to match would otherwise take an hour to refuse
        check_parameter_count("text encoder", sources, 2 * text.hidden_size ** 2 * text.num_hidden_layers
                              + 4 * vision.hidden_size ** 2 * vision.depth)
    except CheckpointError as e:
        raise TextEncoderLoadError(str(e)) from None


# ---------------------------------------------------------------------------------------- tokenizer lookups

def _text_encoder_folder(path: Path) -> Path:
    if (path / "text_encoder" / "config.json").is_file():
        return path / "text_encoder"
    if (path / "config.json").is_file():
        return path
    raise TextEncoderLoadError(f"{path}: not a diffusers model folder: no text_encoder/config.json or config.json")


def is_tokenizer_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "tokenizer.json").is_file() or
                           ((p / "vocab.json").is_file() and (p / "merges.txt").is_file()))


def comfyui_tokenizer_dir() -> Path | None:
    """ComfyUI's bundled Qwen2.5 tokenizer (comfy/text_encoders/qwen25_tokenizer) when `comfy` is importable."""
    try:
        spec = importlib.util.find_spec("comfy")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or []) or ([os.path.dirname(spec.origin)] if spec.origin else [])
    for root in roots:
        cand = Path(root) / "text_encoders" / "qwen25_tokenizer"
        if is_tokenizer_dir(cand):
            return cand
    return None


def bundled_tokenizer_dir() -> Path:
    """The Qwen2.5 tokenizer shipped in this package (Apache-2.0, see its README): always there, offline."""
    return Path(__file__).resolve().parent / "qwen25_tokenizer"


def _hub_tokenizer_dir() -> Path:
    """Download Qwen/Qwen-Image's tokenizer/ folder (the last resort)."""
    from huggingface_hub import snapshot_download

    root = snapshot_download(HUB_REPO, allow_patterns=["tokenizer/*"])
    return Path(root) / "tokenizer"


def find_tokenizer_dir(path: str | os.PathLike | None = None, tokenizer_path: str | os.PathLike | None = None,
                       allow_download: bool = True) -> Path:
    """Where the Qwen2.5 tokenizer is: `tokenizer_path`; the diffusers folder's `tokenizer/`; a `tokenizer/`
    folder or tokenizer files next to a single file; ComfyUI's bundled copy; the copy shipped in this package;
    else (only if that copy was removed) downloaded from the hub."""
    tried = []
    if tokenizer_path is not None:
        if is_tokenizer_dir(tokenizer_path):
            return Path(tokenizer_path)
        raise TextEncoderLoadError(f"{tokenizer_path}: not a tokenizer folder (needs tokenizer.json, or vocab.json "
                                   f"and merges.txt)")
    if path is not None:
        p = Path(path)
        if p.is_dir():  # a model folder, or its text_encoder/ folder (tokenizer/ is then a sibling)
            cands = [p / "tokenizer"] if (p / "text_encoder").is_dir() else [p / "tokenizer", p.parent / "tokenizer", p]
        else:
            cands = [p.parent / "tokenizer", p.parent / "qwen25_tokenizer", p.parent]
        for c in cands:
            tried.append(str(c))
            if is_tokenizer_dir(c):
                return c
    comfy = comfyui_tokenizer_dir()
    if comfy is not None:
        return comfy
    tried.append("ComfyUI's comfy/text_encoders/qwen25_tokenizer (comfy not importable)")
    bundled = bundled_tokenizer_dir()
    if is_tokenizer_dir(bundled):
        return bundled
    tried.append(f"{bundled} (the package's own copy, missing)")
    if allow_download:
        try:
            d = _hub_tokenizer_dir()
            if is_tokenizer_dir(d):
                return d
            tried.append(f"{HUB_REPO}/tokenizer (downloaded, but incomplete)")
        except Exception as e:  # offline, no hub access, ...
            tried.append(f"{HUB_REPO} subfolder tokenizer on the Hugging Face hub ({type(e).__name__}: {e})")
    raise TextEncoderLoadError(
        "cannot find the Qwen2.5 tokenizer; looked in: " + "; ".join(tried)
        + ". Pass tokenizer_path= (a folder with vocab.json, merges.txt and tokenizer_config.json), put a "
          "tokenizer/ folder next to the weights, or go online once to download it.")


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(os.fspath(path))
    except Exception as e:
        raise TextEncoderLoadError(f"{path}: cannot load the tokenizer: {e}") from None


def load_image_processor(path: str | os.PathLike | None = None):
    """The PIL image processor from a `processor/` folder (preprocessor_config.json), else Qwen2.5-VL's defaults."""
    if path is not None and (Path(path) / "preprocessor_config.json").is_file():
        cfg = read_json(os.path.join(path, "preprocessor_config.json"))
        cfg = {k: v for k, v in cfg.items() if k not in ("image_processor_type", "processor_class")}
        return image_processor_class().from_dict(cfg)
    return default_image_processor()


# ------------------------------------------------------------------------------------------------- the loader

def load_text_encoder(path: str | os.PathLike, device=None, dtype: torch.dtype | None = None, *, config=None,
                      tokenizer_path: str | os.PathLike | None = None,
                      processor_path: str | os.PathLike | None = None,
                      allow_download: bool = True, multimodal_rope: bool = True) -> QwenTextEncoder:
    """Load the Qwen-Image text encoder.

    `path`: a diffusers model folder (with `text_encoder/`, `tokenizer/`, `processor/`) or its `text_encoder/`
    folder; a ComfyUI single file `qwen_2.5_vl_7b*.safetensors` (bf16/fp16, or fp8 with optional per-weight
    `scale_weight`, up-cast on load); or a ComfyUI full checkpoint (keys under `text_encoders.qwen25_7b.
    transformer.`). `config` (a `Qwen2_5_VLConfig`, dict or config.json path) overrides the folder's config or,
    for single files, the official Qwen2.5-VL-7B one. dtype defaults to the stored one (fp8 -> bfloat16);
    device to CPU. The tokenizer is looked up as `find_tokenizer_dir` says; the image processor from
    `processor_path`, the folder's `processor/`, or Qwen2.5-VL's defaults."""
    path = Path(path)
    model = load_text_encoder_model(path, device=device, dtype=dtype, config=config)
    tokenizer = load_tokenizer(find_tokenizer_dir(path, tokenizer_path, allow_download=allow_download))
    if processor_path is None:
        base = path if path.is_dir() else path.parent
        for cand in (base / "processor", base.parent / "processor"):
            if (cand / "preprocessor_config.json").is_file():
                processor_path = cand
                break
    return QwenTextEncoder(model, tokenizer, load_image_processor(processor_path), multimodal_rope=multimodal_rope)


__all__ = [
    "DROP_TOKENS", "EDIT_PLUS_IMAGE_PROMPT", "EDIT_PLUS_TEMPLATE", "EDIT_TEMPLATE", "QWEN25_VL_7B_CONFIG",
    "QwenTextEncoder", "T2I_TEMPLATE", "TEMPLATES", "TextEncoderLoadError", "VISION_AREA", "calculate_dimensions",
    "bundled_tokenizer_dir", "default_image_processor", "disk_key_to_model_name", "find_tokenizer_dir",
    "load_image_processor",
    "load_text_encoder", "load_text_encoder_model", "load_tokenizer", "model_name_to_disk_key",
    "official_text_encoder_config", "repeat_for_images", "resize_for_vision", "save_text_encoder_file", "vision_size",
]
