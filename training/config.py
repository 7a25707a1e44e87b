"""The training config: one TOML file, checked on load, with `section.key=value` overrides from the command line.

Every section is a dataclass; an unknown key, a wrong type or a bad value is refused with the field's full name
(`optimizer.lr`, `stages[1].steps`), before anything loads."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin, get_type_hints

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A config field is missing, unknown or invalid; the message names it."""


@dataclass
class ModelConfig:
    preset: str = ""                  # pretraining from random init: a qwenimage_core.config preset ("official", ...)
    path: str = ""                    # fine-tuning: a diffusers folder or a ComfyUI single file
    preset_overrides: dict = field(default_factory=dict)  # e.g. {joint_attention_dim = 64}
    text_encoder: str = ""            # for caching and validation
    vae: str = ""
    dtype: str = "float32"            # the trained weights' dtype (mixed precision is train.mixed_precision)
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    path: str = ""                    # a folder of images + same-stem .txt captions, or a JSONL manifest
    kind: str = "auto"
    on_error: str = "skip"            # skip (report and drop bad rows) | error (refuse the dataset)
    min_size: int = 64
    cache_dir: str = ""               # default: <output.dir>/cache
    area: int = 1024 * 1024           # bucket area in pixels
    ref_area: int = 1024 * 1024       # edit references: about a megapixel, as the pipelines
    batch_size: int = 1               # per process
    category_weights: dict = field(default_factory=dict)
    template: str = "t2i"             # t2i | edit | edit_plus (edit triples)
    max_text_tokens: int = 0          # 0: no cap
    caption_dropout: float = 0.0      # share of samples trained on the empty prompt, so CFG works (e.g. 0.1)


@dataclass
class ObjectiveConfig:
    name: str = "flow_matching"
    timesteps: str = "logit_normal"   # uniform | logit_normal | shift | dynamic
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 3.0                # for timesteps = "shift"
    weighting: str = "none"           # none | cosmap | sigma_sqrt


@dataclass
class OptimizerConfig:
    lr: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    eps: float = 1e-8
    eight_bit: bool = False           # bitsandbytes AdamW8bit, when installed


@dataclass
class ScheduleConfig:
    kind: str = "constant"            # constant | cosine
    warmup: int = 0
    min_lr_ratio: float = 0.0         # cosine floor, as a fraction of lr


@dataclass
class TrainConfig:
    mode: str = "lora"                # pretrain | full | lora | dpo (and the other RL modes)
    weights: str = "lora"             # RL modes (dpo, ...): which weights train: lora | full
    steps: int = 1000                 # used when there are no [[stages]]
    grad_accum: int = 1
    mixed_precision: str = "no"       # no | bf16 | fp16
    max_grad_norm: float = 1.0        # 0: no clipping
    max_nonfinite_steps: int = 3      # stop after this many steps in a row with an inf/NaN loss (each is skipped)
    seed: int = 0
    ema_decay: float = 0.0            # 0: no EMA
    distributed: dict = field(default_factory=dict)  # passed to accelerate (e.g. find_unused_parameters)
    vram_budget_gb: float = 0.0       # LoRA: the memory plan (training/memory_plan.py) fits the run in this; 0: none
    blocks_to_swap: int = -1          # LoRA: blocks streamed from CPU memory; -1: from the budget (none without one)
    fp8_base: str = "auto"            # LoRA: auto (fp8 files stay fp8; fp8 when the budget needs it) | on | off


@dataclass
class LoraConfig:
    rank: int = 16
    alpha: float = 16.0
    targets: list = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                                   "add_v_proj", "to_add_out"])
    dropout: float = 0.0


@dataclass
class VAETrainConfig:
    """The VAE modes (train.mode = "vae" from model.preset, "vae_decoder" from model.path): data, losses, GAN."""
    crop: int = 256                   # random square crops of this many pixels (smaller images are scaled up)
    holdout: int = 4                  # images of the data held out for PSNR/SSIM before and after (no eval_data)
    eval_data: str = ""               # or a separate folder / JSONL of evaluation images
    eval_size: int = 0                # their centre crops, in pixels; 0: crop
    sample_posterior: bool = True     # decode a posterior sample (as the transformer's latents vary); else its mean
    latent_stats: int = 256           # mode "vae": measure the latents' per-channel mean and std on this many
                                      # training images and ship them (the transformer trains on normalised
                                      # latents; the official statistics fit only the official encoder); 0: keep
    l1: float = 1.0                   # reconstruction weights (mean absolute / squared error, images in [-1, 1])
    l2: float = 0.0
    kl: float = 1e-6                  # KL to N(0, 1), mean per latent element; mode "vae" only (LDM's 1e-6 on sums
                                      # is about 1e-7 here, as the reconstruction terms are means too)
    perceptual: float = 1.0           # the LPIPS-style term's weight, when perceptual_weights names a file
    perceptual_weights: str = ""      # safetensors: VGG16 features.N.* (+ LPIPS lin0..lin4); "": no perceptual term
    gan: float = 0.0                  # patch-GAN weight; 0: no discriminator
    gan_start: int = 0                # optimiser steps before the discriminator and its term start
    gan_adaptive: bool = True         # scale the GAN term by LDM's gradient-norm ratio (times `gan`); else `gan` alone
    disc_lr: float = 1e-4
    disc_channels: int = 64
    disc_layers: int = 3


@dataclass
class DPOConfig:
    """train.mode = "dpo": Flow-DPO on preference pairs (data.path: a JSONL of pairs or scored groups)."""
    beta: float = 2.0                 # on per-sample mean squared errors; Flow-DPO's 100 saturates the loss in a few
                                      # steps (training/objectives/dpo.py says why); Diffusion-DPO: 5000
    sft: float = 1.0                  # weight of the chosen image's flow-matching loss added to DPO's: keeps samples
                                      # clean (DPO alone may raise both errors, the loser's more); 0: plain DPO


@dataclass
class ReferenceConfig:
    """The frozen reference of the RL modes. With LoRA it is the base (adapters off), never a second copy; full
    fine-tuning keeps a frozen copy of model.path."""
    device: str = ""                  # full only: "" on the training device; "cpu": kept on the CPU, its blocks
                                      # streamed to the device one ahead of the compute (qwenimage_core.offload)
    fp8: bool = False                 # full only: the copy's block linears in float8 (up-cast per layer)
    refresh_every: int = 0            # 0: offline (the starting model); N: reference = policy every N steps


@dataclass
class RLConfig:
    """Online RL (train.mode "grpo" or "nft"): groups of samples of the current policy for the prompts in data.path
    (a .txt file, one prompt a line, or JSONL rows {"prompt", any metadata the rewards read}), scored by `rewards`.
    Defaults: Flow-GRPO's Qwen-Image setting (group 16, 10 sampling steps, 512 px, true CFG 4)."""
    rewards: list = field(default_factory=list)  # scorer specs: "name", "module:function" or {name, weight, options}
    group_size: int = 16              # samples per prompt (G); advantages are normalised within each group
    groups: int = 32                  # prompts per iteration, over all processes
    inner_epochs: int = 1             # passes over an iteration's samples
    steps: int = 10                   # sampling steps of the rollouts (validation.steps, e.g. 50, evaluates)
    width: int = 512
    height: int = 512
    cfg: float = 4.0                  # true CFG while sampling (1: none)
    train_cfg: bool = True            # and while computing the trained log-probabilities (GRPO)
    negative_prompt: str = " "
    sampler: str = "sde"              # sde (Flow-GRPO's ODE-to-SDE step) | cps (coefficients-preserving)
    noise_level: float = 0.7
    sde_window: int = 0               # > 0: SDE and training on this many steps only, ODE elsewhere (MixGRPO/Fast)
    sde_window_range: list = field(default_factory=lambda: [0, 5])  # the window starts at random in [lo, hi - size]
    sde_window_schedule: str = "random"   # random (Flow-GRPO-Fast) | progressive (MixGRPO: early steps to late)
    sde_window_every: int = 25        # progressive: iterations before the window moves on
    sde_window_stride: int = 1        # progressive: steps it moves by (it stops at hi - size)
    timestep_fraction: float = 1.0    # no window: train this fraction of the SDE steps (all but the last), first first
    clip_range: float = 1e-4          # PPO clip of the ratio
    adv_clip_max: float = 5.0         # advantages clipped to +-this
    global_std: bool = True           # normalise by the std of all of an iteration's rewards, not the group's
    beta: float = 0.0                 # KL to the reference, the exact Gaussian KL per step (Flow-GRPO's beta x |dt|)
    nft_beta: float = 1.0             # DiffusionNFT: how far the implicit positive/negative policies move
    nft_timesteps: int = 2            # DiffusionNFT: forward-noised points per sample and iteration
    nft_kl: float = 0.0               # DiffusionNFT: weight of ||v - v_ref||^2


@dataclass
class OutputConfig:
    dir: str = "runs/qwenimage"
    save_every: int = 500
    keep_last: int = 3
    formats: list = field(default_factory=lambda: ["diffusers", "comfyui"])  # full weights; LoRA is one file


@dataclass
class LoggingConfig:
    every: int = 10
    tensorboard: bool = True
    wandb: bool = False  # Weights & Biases through accelerate's tracker (pip install wandb; WANDB_MODE=offline works)
    progress: bool = True


@dataclass
class ValidationConfig:
    every: int = 0                    # 0: only at the end (when prompts are given)
    prompts: list = field(default_factory=list)
    negative_prompt: str = " "
    seeds: list = field(default_factory=lambda: [0])
    width: int = 1024
    height: int = 1024
    steps: int = 30
    cfg: float = 4.0
    suite: str = ""                   # an evaluation suite scored at every validation (qwenimage eval --list)
    suite_data: str = ""              # its prompt/metadata file, as for qwenimage eval --data
    suite_limit: int = 0              # 0: every item; N: its first N (held-out evaluation must stay short)
    scorers: list = field(default_factory=list)   # [] the suite's own; or rewards specs (names or tables)


@dataclass
class StageConfig:
    name: str = ""
    steps: int = 0
    lr: float = 0.0                   # 0: optimizer.lr
    area: int = 0                     # 0: data.area
    data: str = ""                    # "": data.path
    category_weights: dict = field(default_factory=dict)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    vae: VAETrainConfig = field(default_factory=VAETrainConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    stages: list = field(default_factory=list)  # of StageConfig

    def stage_list(self) -> list[StageConfig]:
        """The stages to run: the [[stages]] given, else one stage of train.steps."""
        return self.stages or [StageConfig(name="main", steps=self.train.steps)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


RL_MODES = ("dpo", "grpo", "nft")  # post-training: LoRA or full weights (train.weights) against a reference


def trains_lora(cfg: "Config") -> bool:
    """Whether the run trains LoRA adapters (mode lora, or an RL mode with train.weights = "lora")."""
    return cfg.train.mode == "lora" or cfg.train.mode in RL_MODES and cfg.train.weights == "lora"


CHOICES = {
    "data.kind": ("auto", "folder", "jsonl"), "data.on_error": ("skip", "error"),
    "data.template": ("t2i", "edit", "edit_plus"), "objective.name": ("flow_matching",),
    "objective.timesteps": ("uniform", "logit_normal", "shift", "dynamic"),
    "objective.weighting": ("none", "cosmap", "sigma_sqrt"), "schedule.kind": ("constant", "cosine"),
    "train.mode": ("pretrain", "full", "lora", "vae", "vae_decoder", "dpo", "grpo", "nft"), "train.weights": ("lora", "full"),
    "reference.device": ("", "cpu"), "train.mixed_precision": ("no", "bf16", "fp16"),
    "model.dtype": ("float32", "bfloat16", "float16"), "train.fp8_base": ("auto", "on", "off"),
    "rl.sampler": ("sde", "cps"), "rl.sde_window_schedule": ("random", "progressive"),
}
POSITIVE = ("data.batch_size", "data.area", "data.min_size", "optimizer.lr", "train.steps", "train.grad_accum",
            "lora.rank", "lora.alpha", "output.save_every", "output.keep_last", "logging.every",
            "validation.width", "validation.height", "validation.steps", "objective.shift", "objective.logit_std",
            "optimizer.eps", "train.max_nonfinite_steps", "vae.crop", "vae.disc_lr", "vae.disc_channels",
            "vae.disc_layers", "dpo.beta", "rl.group_size", "rl.groups", "rl.inner_epochs", "rl.steps", "rl.width",
            "rl.sde_window_every", "rl.sde_window_stride",
            "rl.height", "rl.cfg", "rl.clip_range", "rl.adv_clip_max", "rl.nft_beta", "rl.nft_timesteps")
NON_NEGATIVE = ("train.max_grad_norm", "optimizer.weight_decay", "schedule.warmup", "train.seed", "vae.holdout",
                "vae.latent_stats", "vae.eval_size", "vae.l1", "vae.l2", "vae.kl", "vae.perceptual", "vae.gan", "vae.gan_start",
                "reference.refresh_every", "dpo.sft", "rl.noise_level", "rl.sde_window", "rl.beta", "rl.nft_kl",
                "train.vram_budget_gb")


def _build(cls, raw: dict, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(f'{where}.{k}' if where else k for k in unknown)}; "
                          f"known: {', '.join(sorted(names))}")
    kw = {}
    for name, value in raw.items():
        path = f"{where}.{name}" if where else name
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kw[name] = _build(typ, value, path)
        elif name == "stages" and cls is Config:
            if not isinstance(value, list):
                raise ConfigError("stages: expected an array of tables ([[stages]])")
            kw[name] = [_build(StageConfig, s, f"stages[{i}]") for i, s in enumerate(value)]
        else:
            kw[name] = _check_type(value, typ, path)
    return cls(**kw)


def _check_type(value: Any, typ, path: str):
    base = get_origin(typ) or typ
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is bool and not isinstance(value, bool) or base is not bool and isinstance(value, bool) and base is not Any:
        raise ConfigError(f"{path}: expected {base.__name__}, got {value!r}")
    if base in (int, float, str, list, dict) and not isinstance(value, base):
        raise ConfigError(f"{path}: expected {base.__name__}, got {type(value).__name__} {value!r}")
    return value


def validate(cfg: Config) -> Config:
    from ..qwenimage_core.dtypes import canonical_float

    try:  # bf16 / fp16 / fp32 as on the command line
        cfg.model.dtype = canonical_float(cfg.model.dtype)
    except ValueError as e:
        raise ConfigError(f"model.dtype: {e}") from None
    flat = {f"{s}.{k}": v for s, sec in cfg.to_dict().items() if isinstance(sec, dict) for k, v in sec.items()}
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"{key}: {flat[key]!r} is not one of {', '.join(allowed)}")
    for key in POSITIVE:
        if not flat[key] > 0:
            raise ConfigError(f"{key}: must be positive, got {flat[key]!r}")
    for key in NON_NEGATIVE:
        if not flat[key] >= 0:
            raise ConfigError(f"{key}: must be 0 or more, got {flat[key]!r}"
                              + (" (0: no clipping)" if key == "train.max_grad_norm" else ""))
    betas = cfg.optimizer.betas
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                  for b in betas):
        raise ConfigError(f"optimizer.betas: expected two numbers in [0, 1) (e.g. [0.9, 0.999]), got {betas!r}")
    if not 0.0 <= cfg.schedule.min_lr_ratio <= 1.0:
        raise ConfigError(f"schedule.min_lr_ratio: must be in [0, 1], got {cfg.schedule.min_lr_ratio}")
    if bool(cfg.model.preset) == bool(cfg.model.path):
        raise ConfigError("model: give exactly one of model.preset (pretraining from scratch) and model.path "
                          "(fine-tuning a checkpoint)")
    if cfg.train.mode in ("pretrain", "vae") and not cfg.model.preset:
        raise ConfigError(f"train.mode: {cfg.train.mode!r} starts from random weights: set model.preset")
    if cfg.train.mode in ("full", "lora", "vae_decoder", *RL_MODES) and not cfg.model.path:
        raise ConfigError(f"train.mode: {cfg.train.mode!r} fine-tunes a checkpoint: set model.path")
    if bool(cfg.validation.suite) != bool(cfg.validation.suite_data):
        raise ConfigError("validation.suite / validation.suite_data: give both (a suite name and its file) or neither")
    if cfg.validation.suite_limit < 0:
        raise ConfigError(f"validation.suite_limit: must be 0 or more, got {cfg.validation.suite_limit}")
    if not 0.0 <= cfg.data.caption_dropout < 1.0:
        raise ConfigError(f"data.caption_dropout: must be in [0, 1), got {cfg.data.caption_dropout!r}")
    if cfg.data.caption_dropout and (cfg.train.mode not in ("pretrain", "full", "lora") or cfg.data.template != "t2i"):
        raise ConfigError("data.caption_dropout: only for text-to-image training (train.mode pretrain, full or lora "
                          f"with data.template = 't2i'), not mode {cfg.train.mode!r} / template {cfg.data.template!r}")
    if cfg.train.mode in ("vae", "vae_decoder"):
        _validate_vae(cfg)
    if cfg.train.mode in ("grpo", "nft"):
        _validate_rl(cfg)
    if cfg.train.mode in RL_MODES and trains_lora(cfg) and (cfg.reference.device or cfg.reference.fp8):
        raise ConfigError("reference.device / reference.fp8: options of the frozen copy train.weights = 'full' "
                          "keeps; with LoRA the reference is the base itself (adapters off)")
    if not cfg.data.path and not all(s.data for s in cfg.stages or [StageConfig()]):
        raise ConfigError("data.path: required (or a data path in every stage)")
    t = cfg.train
    if t.blocks_to_swap < -1:
        raise ConfigError(f"train.blocks_to_swap: must be -1 (from the budget) or more, got {t.blocks_to_swap}")
    if (t.vram_budget_gb or t.blocks_to_swap >= 0 or t.fp8_base != "auto") and t.mode != "lora":
        raise ConfigError(f"train.vram_budget_gb / blocks_to_swap / fp8_base: the memory plan is for train.mode "
                          f"'lora', not {t.mode!r}")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay: must be in [0, 1), got {cfg.train.ema_decay}")
    if not 0.0 <= cfg.lora.dropout < 1.0:
        raise ConfigError(f"lora.dropout: must be in [0, 1), got {cfg.lora.dropout}")
    for f in cfg.output.formats:
        if f not in ("diffusers", "comfyui"):
            raise ConfigError(f"output.formats: {f!r} is not one of diffusers, comfyui")
    for i, s in enumerate(cfg.stages):
        if s.steps <= 0:
            raise ConfigError(f"stages[{i}].steps: must be positive, got {s.steps}")
        if s.area and s.area % 256:
            raise ConfigError(f"stages[{i}].area: {s.area} pixels is not a whole number of 16x16 patches")
    if cfg.validation.width % 16 or cfg.validation.height % 16:
        raise ConfigError("validation.width/height: must be multiples of 16")
    return cfg


def _validate_vae(cfg: Config) -> None:
    v = cfg.vae
    for key in ("crop", "eval_size"):
        if getattr(v, key) % 8:
            raise ConfigError(f"vae.{key}: {getattr(v, key)} pixels is not a multiple of 8 (the VAE's 8x down)")
    if v.l1 + v.l2 + (v.perceptual if v.perceptual_weights else 0) <= 0:
        raise ConfigError("vae.l1 / vae.l2 / vae.perceptual: at least one reconstruction weight must be positive")


def _validate_rl(cfg: Config) -> None:
    r = cfg.rl
    if not r.rewards:
        raise ConfigError("rl.rewards: give at least one reward (a name, module:function, or {name, weight, ...})")
    if r.width % 16 or r.height % 16:
        raise ConfigError("rl.width/height: must be multiples of 16")
    if r.group_size < 2 and cfg.train.mode == "grpo":
        raise ConfigError("rl.group_size: GRPO needs at least 2 samples per prompt to compare")
    if not 0.0 < r.timestep_fraction <= 1.0:
        raise ConfigError(f"rl.timestep_fraction: must be in (0, 1], got {r.timestep_fraction}")
    if r.sde_window:
        lo, hi = (list(r.sde_window_range) + [None, None])[:2]
        if len(r.sde_window_range) != 2 or not (isinstance(lo, int) and isinstance(hi, int)
                                                and 0 <= lo and lo + r.sde_window <= hi <= r.steps - 1):
            raise ConfigError(f"rl.sde_window_range: {r.sde_window_range} must be [lo, hi] with lo >= 0 and "
                              f"lo + rl.sde_window ({r.sde_window}) <= hi <= rl.steps - 1 ({r.steps - 1})")
    elif r.steps < 2:
        raise ConfigError("rl.steps: at least 2 (the last step is never stochastic)")
    if not r.noise_level > 0 and cfg.train.mode == "grpo":
        raise ConfigError("rl.noise_level: GRPO needs a stochastic sampler (noise_level > 0)")


def check_finite(value, path: str = "") -> None:
    """Refuse inf and nan anywhere in the raw config (TOML reads `inf` and `nan` as floats): `optimizer.lr = inf`
    trained to NaN weights and exported them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path or 'config'}: {value} is not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_finite(v, f"{path}[{i}]")


def parse_override(item: str) -> tuple[list[str], Any]:
    """'optimizer.lr=1e-4' -> (['optimizer', 'lr'], 0.0001): the value read as TOML, else as a string."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


MAX_CONFIG_BYTES = 16 * 1024 * 1024


def _read(source) -> dict:
    """The TOML file (or a dict, copied) as plain data. Only a regular file is opened: a FIFO would block open()
    forever, a folder fail as an OSError."""
    from ..qwenimage_core.images import not_regular

    if isinstance(source, dict):
        return json.loads(json.dumps(source))
    why = not_regular(source, MAX_CONFIG_BYTES)
    if why:
        raise ConfigError(f"{source}: config file is {why}")
    try:
        with open(source, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: cannot read the config file ({e})") from None


def load_raw(source, overrides=()) -> dict:
    """A TOML file (or a dict) as plain data, KEY=VALUE overrides applied, every number finite; checked against
    its dataclass by the caller (this config, or another command's such as `data synth`)."""
    try:
        raw = _read(source)
        for item in overrides:
            keys, value = parse_override(item)
            node = raw
            for k in keys[:-1]:
                node = node.setdefault(k, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"override {item!r}: {k} is not a section")
            node[keys[-1]] = value
        check_finite(raw)
    except RecursionError:  # tomllib and check_finite recurse once per level of nesting
        raise ConfigError(f"{'config' if isinstance(source, dict) else source}: a value is nested too deeply "
                          "(arrays or tables hundreds of levels deep)") from None
    return raw


def load_config(source, overrides=()) -> Config:
    """A Config from a TOML file path (or a dict), with overrides applied, validated. `cfg.folder`: the file's
    folder ("" for a dict), where `module:function` reward plugins are looked for too."""
    cfg = validate(_build(Config, load_raw(source, overrides), ""))
    cfg.folder = "" if isinstance(source, dict) else os.path.dirname(os.path.abspath(source))
    return cfg
