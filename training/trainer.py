"""The training engine: stages of flow-matching training over cached latents, on accelerate.

One loop serves pretraining from a config preset, full fine-tuning and LoRA (peft), text-to-image and edit
triples, and the VAE modes (`vae_run`: a VAE from scratch, or decoder-only fine-tuning, on image crops).
accelerate places the model, runs mixed precision and distribution (DDP/FSDP/DeepSpeed as configured by
`accelerate launch`); gradients are accumulated by hand so one optimiser step is the same arithmetic on any number
of processes. Validation images come from the core pipeline, the same code the nodes run."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time

import torch
from tqdm.auto import tqdm

from ..qwenimage_core.checkpoint import load_transformer, save_comfyui_transformer, save_transformer
from ..qwenimage_core.checkpoint21 import FAMILY_20B
from ..qwenimage_core.config import preset
from ..qwenimage_core.fp8 import FP8_DTYPES, FP8Linear
from ..qwenimage_core.images import save_png
from ..qwenimage_core.lora import save_lora
from ..qwenimage_core.offload import BlockSwap
from ..qwenimage_core.pipeline import QwenImage
from ..qwenimage_core.transformer import QwenImageTransformer
from .data.buckets import BucketBatchSampler, category_weights
from .data.cache import CachedDataset, CacheSettings, build_cache, collate, missing
from .data.caption_dropout import build_empty, drop_captions, empty_cache_path, load_empty
from .checkpointing import list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint
from .config import Config, ConfigError, trains_lora
from .data.dataset import load_samples
from .data.preferences import PairDataset, as_pairs, load_pairs, pair_samples
from .guards import LossGuard, check_finite, check_update
from .memory_plan import plan_for_config
from .objectives import ONLINE_MODES, VAE_MODES, build_objective
from .progress import IterationLine, MetricsLog, postfix
from .vae_run import build_vae, evaluate, export_vae, heldout, vae_stage_data, write_metrics

log = logging.getLogger("qwenimage.training")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------------------------------------- model

def build_model(cfg: Config, plan=None) -> QwenImageTransformer:
    """Random init at a preset (pretraining) or a loaded checkpoint; LoRA adapters injected with peft. A memory
    `plan` (training/memory_plan.py) says whether the frozen base is fp8 and turns on gradient checkpointing."""
    dtype = DTYPES[cfg.model.dtype]
    if cfg.train.mode in VAE_MODES:
        return build_vae(cfg, dtype)
    if cfg.model.preset:
        try:
            model = QwenImageTransformer(preset(cfg.model.preset, **cfg.model.preset_overrides)).to(dtype)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"model.preset / model.preset_overrides: {e}") from None
    else:
        model = load_transformer(cfg.model.path, dtype=dtype, weight_dtype=base_weight_dtype(plan, dtype),
                                 family=FAMILY_20B)
    if cfg.model.gradient_checkpointing or plan is not None and plan.checkpointing:
        model.enable_gradient_checkpointing()
    if trains_lora(cfg):
        from peft import LoraConfig, inject_adapter_in_model

        lc = LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, target_modules=list(cfg.lora.targets),
                        lora_dropout=cfg.lora.dropout, init_lora_weights=True)
        model = inject_adapter_in_model(lc, model)
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError(f"lora.targets: {cfg.lora.targets} match no layer of the model")
        adapters_off_fp8(model, dtype)
    elif any(isinstance(m, FP8Linear) for m in model.modules()):
        raise ConfigError(f"model.path: {cfg.model.path} holds fp8 weights, which cannot be trained in full; "
                          "train a LoRA (train.mode = 'lora') or use a bf16 checkpoint")
    else:
        model.requires_grad_(True)
    return model.train()


def base_weight_dtype(plan, dtype):
    """load_transformer's weight_dtype: fp8 quantises a float base on load (an fp8 file stays as stored); a plan
    without fp8 de-quantises an fp8 file; no plan loads the file as it is."""
    if plan is None:
        return None
    return torch.float8_e4m3fn if plan.fp8 else dtype


def adapters_off_fp8(model, dtype) -> None:
    """Adapters on an fp8 base train in `dtype`. peft gives an adapter its base layer's dtype, which for an
    FP8Linear is its compute dtype (peft reads `compute_dtype`, as for bitsandbytes layers): the adapters then hold
    the values peft drew, as on a full-precision base with the same seed. They are never initialised again (that
    drew other values, and consumed the generator). Only a peft that cast them to fp8 itself leaves nothing to keep:
    those are initialised again, in `dtype`."""
    for m in model.modules():
        if isinstance(getattr(m, "base_layer", None), FP8Linear) and "default" in getattr(m, "lora_A", {}):
            rounded = m.lora_A["default"].weight.dtype in FP8_DTYPES
            m.lora_A.to(dtype)
            m.lora_B.to(dtype)
            if rounded:
                m.reset_lora_parameters("default", True)


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def lora_matrices(model, alpha: float) -> dict:
    """peft's adapters -> {module: (A, B, alpha)} for core save_lora (the layout the nodes and diffusers load)."""
    out = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            out[name] = (mod.lora_A["default"].weight.detach().float(), mod.lora_B["default"].weight.detach().float(),
                         alpha)
    return out


# -------------------------------------------------------------------------------------------------- data

def _stamp(path: str) -> str:
    if not path:
        return ""
    st = os.stat(path) if os.path.exists(path) else None
    return f"{os.path.abspath(path)}:{st.st_size if st else 0}:{st.st_mtime_ns if st else 0}"


class Encoders:
    """The VAE and text encoder, loaded only when a cache must be built or validation images made."""

    def __init__(self, cfg: Config, device):
        self.cfg, self.device, self._pair = cfg, device, None

    def get(self):
        if self._pair is None:
            from ..qwenimage_core.text_encoder import load_text_encoder
            from ..qwenimage_core.vae import load_vae

            m = self.cfg.model
            if not m.vae or not m.text_encoder:
                raise ConfigError("model.vae and model.text_encoder: needed to cache the data and to validate")
            self._pair = (load_vae(m.vae, device=self.device), load_text_encoder(m.text_encoder, device=self.device))
        return self._pair


def stage_cache(cfg: Config, stage):
    """(samples, cache settings, cache folder) of a stage. The encoders are identified by their files' stamps,
    so checking a complete cache never loads them."""
    settings = CacheSettings(area=stage.area or cfg.data.area, template=cfg.data.template,
                             max_text_tokens=cfg.data.max_text_tokens or None, ref_area=cfg.data.ref_area,
                             model_id=_stamp(cfg.model.vae) + "|" + _stamp(cfg.model.text_encoder))
    if cfg.train.mode == "dpo":  # preference pairs: their chosen and rejected images cached as samples, in turn
        samples = pair_samples(load_pairs(stage.data or cfg.data.path, on_error=cfg.data.on_error,
                                          min_size=cfg.data.min_size, bucket=settings.bucket))
    else:
        samples = load_samples(stage.data or cfg.data.path, kind=cfg.data.kind, on_error=cfg.data.on_error,
                               min_size=cfg.data.min_size)
    return samples, settings, cfg.data.cache_dir or os.path.join(cfg.output.dir, "cache")


def stage_data(cfg: Config, stage, encoders: Encoders, accelerator):
    """The stage's samples, cached (built on the main process when incomplete), as (dataset, sampler)."""
    if cfg.train.mode in VAE_MODES:  # image crops: no cache, no encoders
        return vae_stage_data(cfg, stage, accelerator)
    samples, settings, cache_dir = stage_cache(cfg, stage)
    if accelerator.is_main_process and missing(samples, settings, cache_dir, cfg.data.on_error):
        vae, te = encoders.get()
        build_cache(samples, cache_dir, settings, vae, te, device=None, progress=cfg.logging.progress,
                    on_error=cfg.data.on_error)
    if accelerator.is_main_process and cfg.data.caption_dropout and not os.path.exists(
            empty_cache_path(cache_dir, settings)):
        build_empty(cache_dir, settings, encoders.get()[1])
    accelerator.wait_for_everyone()
    dataset = CachedDataset(samples, cache_dir, settings)
    if cfg.data.caption_dropout:
        dataset.empty_caption = load_empty(empty_cache_path(cache_dir, settings))
    if cfg.train.mode == "dpo":
        return pair_stage_data(cfg, dataset, samples, accelerator)
    samples = dataset.samples  # less any that could not be decoded when cached (on_error = "skip")
    cw = stage.category_weights or cfg.data.category_weights
    weights = category_weights(samples, cw or None) if cw or any(s.weight != 1 for s in samples) else None
    sampler = BucketBatchSampler(dataset.sizes, cfg.data.batch_size, weights=weights, seed=cfg.train.seed,
                                 num_replicas=accelerator.num_processes, rank=accelerator.process_index)
    return dataset, sampler


def pair_stage_data(cfg: Config, cached, samples, accelerator):
    """DPO: the cached (chosen, rejected) samples as pairs, batched by the pair's bucket."""
    dataset = PairDataset(cached, as_pairs(samples))
    sampler = BucketBatchSampler(dataset.sizes, cfg.data.batch_size, seed=cfg.train.seed,
                                 num_replicas=accelerator.num_processes, rank=accelerator.process_index)
    return dataset, sampler


def run_cache(cfg: Config) -> int:
    """`qwenimage cache CONFIG`: build every stage's cache; returns how many samples were encoded."""
    from accelerate import Accelerator

    if cfg.train.mode in VAE_MODES:  # they read the images themselves: nothing to encode
        return 0
    acc = Accelerator(cpu=not torch.cuda.is_available())
    enc, n = Encoders(cfg, acc.device), 0
    for stage in cfg.stage_list():
        samples, settings, cache_dir = stage_cache(cfg, stage)
        if missing(samples, settings, cache_dir, cfg.data.on_error):
            vae, te = enc.get()
            n += build_cache(samples, cache_dir, settings, vae, te, device=None, progress=cfg.logging.progress,
                             on_error=cfg.data.on_error)
        if cfg.data.caption_dropout and not os.path.exists(empty_cache_path(cache_dir, settings)):
            build_empty(cache_dir, settings, enc.get()[1])
    return n


# ---------------------------------------------------------------------------------------------- schedule

def lr_factor(step: int, total: int, cfg: Config) -> float:
    """Linear warm-up, then constant or cosine down to min_lr_ratio, within one stage."""
    s = cfg.schedule
    if s.warmup and step < s.warmup:
        return (step + 1) / s.warmup
    if s.kind == "constant":
        return 1.0
    progress = (step - s.warmup) / max(1, total - s.warmup)
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(params, cfg: Config):
    o = cfg.optimizer
    kw = dict(lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
    if o.eight_bit:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError("optimizer.eight_bit: needs bitsandbytes (pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit(params, **kw)
    return torch.optim.AdamW(params, **kw)


# ------------------------------------------------------------------------------------------------ trainer

class Trainer:
    def __init__(self, cfg: Config, accelerator=None):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedDataParallelKwargs

        self.cfg = cfg
        self.trackers = trackers(cfg)
        if accelerator is None:  # a second run in this process may ask another precision (the process group stays)
            AcceleratorState._reset_state()
        self.acc = accelerator or Accelerator(
            mixed_precision=cfg.train.mixed_precision, cpu=not torch.cuda.is_available(),
            log_with=self.trackers or None, project_dir=cfg.output.dir,
            # the last block's text stream feeds nothing (only image tokens are predicted): DDP must not wait for it
            kwargs_handlers=[DistributedDataParallelKwargs(**{"find_unused_parameters": True,
                                                               **cfg.train.distributed})])
        torch.manual_seed(cfg.train.seed)
        self.plan = plan_for_config(cfg)  # refuses a budget nothing fits, before anything loads
        if self.plan is not None and self.acc.is_main_process:
            print(self.plan.describe(gpu=self.acc.device.type == "cuda"), flush=True)
        self.model = build_model(cfg, self.plan)
        self.swap = self.block_swap()
        self.params = trainable(self.model)
        self.optimizer = make_optimizer(list(self.params.values()), cfg)
        self.model, self.optimizer = self.acc.prepare(self.model, self.optimizer,  # BlockSwap placed the model
                                                      device_placement=[False, None] if self.swap else None)
        if getattr(cfg, "folder", ""):  # reward plugins (module:function) may sit beside the config
            from .rewards.base import add_plugin_folder

            add_plugin_folder(cfg.folder)
        self.objective = build_objective(cfg, self.acc)
        off = self.plan is not None and not self.plan.encoders_on_gpu
        self.encoders = Encoders(cfg, torch.device("cpu") if off else self.acc.device)
        self.ema = ({n: p.detach().float().clone() for n, p in self.params.items()}
                    if cfg.train.ema_decay > 0 else None)
        self.step, self.stage_index, self.stage_step, self.sampler_state = 0, 0, 0, None
        self.losses: list[float] = []
        self.logs: dict = {}              # the objective's last scalars (reconstruction, KL, GAN terms...)
        self.metrics: dict = {}           # VAE modes: PSNR/SSIM on the held-out images, before and after
        self.loss_guard = LossGuard(cfg.train.max_nonfinite_steps)
        self.ckpt_dir = os.path.join(cfg.output.dir, "checkpoints")
        self.metrics_log = MetricsLog(cfg.output.dir) if self.acc.is_main_process else None
        self._iteration, self._validated_at = IterationLine(), None
        self._heldout, self._norm = None, None  # _norm: the trained weights' norm after the last update

    def block_swap(self):
        """The plan's swapped blocks stream from (pinned) CPU memory through forward and backward (core BlockSwap)."""
        if self.plan is None or not self.plan.blocks_to_swap:
            return None
        if self.acc.num_processes > 1:
            raise ConfigError("train.blocks_to_swap / vram_budget_gb: block swap runs in single-process training "
                              f"only ({self.acc.num_processes} processes); give each GPU a budget that needs no swap")
        n = len(self.model.transformer_blocks)
        return BlockSwap(self.model, n - self.plan.blocks_to_swap, self.acc.device, train=True)

    @property
    def unwrapped(self):
        return self.acc.unwrap_model(self.model)

    # -- checkpoints --------------------------------------------------------------------------------------
    def save(self, sampler) -> None:
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            save_checkpoint(self.ckpt_dir, self.step, weights=dict(self.params), optimizer=self.optimizer.state_dict(),
                            scheduler={"stage": self.stage_index, "stage_step": self.stage_step}, ema=self.ema,
                            state={"step": self.step, "stage": self.stage_index, "stage_step": self.stage_step,
                                   "sampler": sampler.state_dict(), "losses": self.losses, "metrics": self.metrics},
                            keep_last=self.cfg.output.keep_last, objective=self.objective.state_dict() or None)
        self.acc.wait_for_everyone()

    def resume(self, path) -> None:
        ck = load_checkpoint(path)
        with torch.no_grad():
            for n, p in self.params.items():
                if n not in ck["weights"]:
                    raise ValueError(f"{path}: checkpoint has no weight {n!r} (a different model or mode?)")
                p.copy_(ck["weights"][n])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.ema is not None and ck["ema"] is not None:
            self.ema = {n: t.float() for n, t in ck["ema"].items()}
        st = ck["state"]
        self.step, self.stage_index, self.stage_step = st["step"], st["stage"], st["stage_step"]
        self.sampler_state, self.losses = st["sampler"], list(st["losses"])
        self.metrics, self._norm = st.get("metrics", {}), None
        if ck.get("objective"):
            self.objective.load_state_dict(ck["objective"])
        log.info("resumed from %s at step %d", path, self.step)

    # -- the loop -----------------------------------------------------------------------------------------
    def weights_norm(self) -> float:
        """The trained weights' L2 norm, for check_update. Summed over processes: replicas scale it by a constant
        (which a ratio of two norms ignores), shards add up to the whole."""
        dtype = torch.float32 if self.acc.device.type == "mps" else torch.float64  # 1e30 weights square past fp32
        total = torch.zeros((), dtype=dtype, device=self.acc.device)
        for p in self.params.values():
            total += torch.linalg.vector_norm(p.detach(), dtype=dtype).square().to(total.device)
        return self.acc.reduce(total.reshape(1), "sum").item() ** 0.5

    def train_step(self, it, dataset, lr: float) -> float:
        cfg, acc = self.cfg, self.acc
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        ga, total = self.objective.micro_batches(cfg.train.grad_accum), 0.0
        self.objective.begin_step(self.step)
        self.objective.collect(self.model, self.step)  # online RL: fresh rollouts when the last ones are spent
        for micro in range(ga):
            idx = next(it)
            base = acc.process_index * len(idx)  # the sample's place in the global batch: same noise on any layout
            gens = [torch.Generator().manual_seed(hash((cfg.train.seed, self.step, micro, base + j)) % 2 ** 63)
                    for j in range(len(idx))]
            # image crops draw their place from the generators; cached samples are read as they are
            batch = dataset.batch(idx, gens) if hasattr(dataset, "batch") else collate([dataset[i] for i in idx])
            if cfg.data.caption_dropout:  # some samples see the empty prompt: the unconditional CFG branch
                batch = drop_captions(batch, dataset.empty_caption, cfg.data.caption_dropout, gens)
            batch = {k: (v.to(acc.device) if torch.is_tensor(v) else [r.to(acc.device) for r in v]
                         if isinstance(v, list) else v) for k, v in batch.items()}
            sync = contextlib.nullcontext() if micro == ga - 1 else acc.no_sync(self.model)
            with sync, acc.autocast():
                per_sample, logs = self.objective.loss(self.model, batch, gens)
                loss = per_sample.mean() / ga
            self.logs = logs or {}
            acc.backward(loss)
            total += loss.detach()
        mean = acc.reduce(total.reshape(1), "mean").item()  # the same on every process: all skip, or none
        checked, what = mean, "loss"
        if math.isfinite(mean) and cfg.train.max_grad_norm > 0:  # a finite loss may still give inf/NaN gradients
            norm = float(acc.clip_grad_norm_(list(self.params.values()), cfg.train.max_grad_norm))
            checked, what = (mean, "loss") if math.isfinite(norm) else (norm, "gradient norm")
        applied = self.loss_guard.ok(checked, self.step + 1, what)  # inf/NaN: no update (and a stop after a few)
        if applied:
            before = self.weights_norm() if self._norm is None else self._norm
            self.optimizer.step()
            self._norm = self.weights_norm()
            check_update(before, self._norm, self.step + 1, lambda: (list_checkpoints(self.ckpt_dir) or [None])[-1])
        self.optimizer.zero_grad(set_to_none=True)
        self.objective.end_step(applied)  # e.g. the discriminator's own step
        if self.ema is not None and math.isfinite(mean):
            d = cfg.train.ema_decay
            with torch.no_grad():
                for n, p in self.params.items():
                    self.ema[n].mul_(d).add_(p.detach().float(), alpha=1 - d)
        return mean

    def run(self, resume=None, stop_after: int | None = None) -> dict:
        """Train every stage; `stop_after` ends the run after that many optimiser steps in this call (tests)."""
        cfg, acc = self.cfg, self.acc
        path = resolve_resume(resume, self.ckpt_dir)
        if path:
            self.resume(path)
        if self.metrics_log is not None:
            self.metrics_log.resume_at(self.step)
        if self.trackers:
            acc.init_trackers("qwenimage", config={"mode": cfg.train.mode, "lr": cfg.optimizer.lr,
                                                   "batch_size": cfg.data.batch_size, "seed": cfg.train.seed})
        stages = cfg.stage_list()
        if cfg.train.mode in VAE_MODES and "before" not in self.metrics:
            self.measure("before")
        if cfg.train.mode in ONLINE_MODES and validating(cfg) and not {"reward", "eval"} & set(self.metrics):
            self.validate()  # the held-out reward (and suite scores) before training
        total_steps = sum(s.steps for s in stages)
        bar = tqdm(total=total_steps, initial=self.step, disable=not (acc.is_main_process and cfg.logging.progress),
                   desc="train", unit="step")
        done_here, t0 = 0, time.time()
        while self.stage_index < len(stages):
            stage = stages[self.stage_index]
            dataset, sampler = (self.objective.data(cfg, stage, self.encoders, acc)  # online RL: its rollouts
                                or stage_data(cfg, stage, self.encoders, acc))
            if self.sampler_state is not None:
                sampler.load_state_dict(self.sampler_state)
                self.sampler_state = None
            it = iter(sampler)
            while self.stage_step < stage.steps:
                if stop_after is not None and done_here >= stop_after:
                    bar.close()
                    return self.summary()
                lr = (stage.lr or cfg.optimizer.lr) * lr_factor(self.stage_step, stage.steps, cfg)
                loss = self.train_step(it, dataset, lr)
                self.step, self.stage_step, done_here = self.step + 1, self.stage_step + 1, done_here + 1
                self.losses.append(loss)
                self.show(bar, {"loss": loss, "lr": lr, "steps_per_s": done_here / (time.time() - t0), **self.logs},
                          (stage.name or str(self.stage_index)) if len(stages) > 1 else None)
                if self.step % cfg.output.save_every == 0 and self.stage_step < stage.steps:
                    self.save(sampler)
                if cfg.validation.every and self.step % cfg.validation.every == 0 and validating(cfg):
                    self.validate()
            if self.stage_index == len(stages) - 1 and validating(cfg) and self._validated_at != self.step:
                self.validate()  # the final validation, before the last checkpoint: its metrics are saved there
            self.save(sampler)  # every stage boundary writes a checkpoint
            self.stage_index, self.stage_step = self.stage_index + 1, 0
        bar.close()
        outputs = self.export()
        if cfg.train.mode in VAE_MODES:
            with self.ema_weights():
                self.measure("after")
            if acc.is_main_process:
                outputs["metrics"] = write_metrics(self.metrics, cfg.output.dir)
        acc.end_training()
        return {**self.summary(), "outputs": outputs}

    def record(self, values: dict, tensorboard: bool = True) -> None:
        """One row of metrics at this step: in output.dir/metrics.jsonl always, in TensorBoard / W&B when they log."""
        if self.metrics_log is not None:
            self.metrics_log.write(self.step, values)
        if self.trackers and tensorboard:
            self.acc.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=self.step)

    def show(self, bar, values: dict, stage: str | None) -> None:
        """A step's figures: kept (record), on the bar, and for RL one line at the end of each iteration."""
        cfg = self.cfg
        self.record(values, tensorboard=self.step % cfg.logging.every == 0)
        show_loss = cfg.train.mode != "grpo"  # GRPO's loss is ~0 on-policy whatever it learns: its reward shows
        bar.update(1)
        bar.set_postfix(postfix(values, show_loss) | ({"stage": stage} if stage else {}))
        per_iteration = getattr(self.objective, "steps_per_iteration", 0)
        if per_iteration and "reward" in values:
            self._iteration.add(values)
            if self.step % per_iteration == 0:
                log.info(self._iteration.close(values, self.step - per_iteration + 1, self.step, show_loss))

    def summary(self) -> dict:
        return {"step": self.step, "losses": list(self.losses), **({"metrics": self.metrics} if self.metrics else {})}

    def measure(self, when: str) -> dict:
        """VAE modes: PSNR/SSIM/L1 of the held-out images' reconstructions, logged and kept under `when`."""
        if self._heldout is None:
            self._heldout = heldout(self.cfg)
        m = evaluate(self.unwrapped, self._heldout, self.cfg.data.batch_size)
        if m:
            self.metrics[when] = m
            log.info("held-out %s training: PSNR %.2f dB, SSIM %.4f (%d images)", when, m["psnr"], m["ssim"],
                     m["images"])
            self.record({f"heldout/{k}": v for k, v in m.items() if k != "images"})
        return m

    # -- outputs and validation ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def ema_weights(self):
        """The EMA weights swapped in (for exports and validation), the trained ones restored after."""
        if self.ema is None:
            yield
            return
        saved = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.ema[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(saved[n])

    def export(self) -> dict:
        """LoRA: out/lora.safetensors; full: out/transformer/ (diffusers) and out/<name>_comfyui.safetensors."""
        cfg, out = self.cfg, {}
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return out
        model = self.unwrapped
        with self.ema_weights():
            check_finite(self.params, f"the trained weights to {cfg.output.dir}")
            if cfg.train.mode in VAE_MODES:
                out.update(export_vae(model, cfg))
            elif trains_lora(cfg):
                out["lora"] = os.path.join(cfg.output.dir, "lora.safetensors")
                save_lora(out["lora"], lora_matrices(model, cfg.lora.alpha),
                          {"qwenimage_rank": cfg.lora.rank, "qwenimage_alpha": cfg.lora.alpha,
                           "qwenimage_steps": self.step})
            else:
                if "diffusers" in cfg.output.formats:
                    out["diffusers"] = os.path.join(cfg.output.dir, "transformer")
                    save_transformer(model, out["diffusers"])
                if "comfyui" in cfg.output.formats:
                    out["comfyui"] = os.path.join(cfg.output.dir, "qwen_image_trained_comfyui.safetensors")
                    save_comfyui_transformer(model, out["comfyui"])
        return out

    @torch.no_grad()
    def validate(self) -> list[str]:
        """Images for the fixed prompts and seeds through the core pipeline; saved and logged."""
        cfg, v, paths = self.cfg, self.cfg.validation, []
        self._validated_at = self.step
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            vae, te = self.encoders.get()
            model = self.unwrapped
            model.eval()
            folder = os.path.join(cfg.output.dir, "validation", f"step-{self.step:08d}")
            os.makedirs(folder, exist_ok=True)
            scored = []  # (prompt, image): RL scores them with its rewards
            with self.ema_weights():
                pipe = QwenImage(model, vae, te, edit_template=None)
                for i, prompt in enumerate(v.prompts):
                    for seed in v.seeds:
                        img = pipe.generate(prompt, negative_prompt=v.negative_prompt, width=v.width,
                                            height=v.height, steps=v.steps, cfg=v.cfg, seed=int(seed))[0]
                        path = os.path.join(folder, f"{i:02d}-seed{seed}.png")
                        save_png(img, path, {"prompt": prompt, "seed": str(seed), "step": str(self.step)})
                        paths.append(path)
                        scored.append((prompt, img))
                        self._log_image(f"validation/{i:02d}-seed{seed}", img)
                if v.suite:
                    self.evaluate_suite(pipe, os.path.join(folder, "eval"))
            model.train()
            if cfg.train.mode in ONLINE_MODES and scored:
                self.held_out_reward(scored)
        self.acc.wait_for_everyone()
        return paths

    def evaluate_suite(self, pipe, out_dir: str) -> dict:
        """validation.suite: the evaluation library's run (same sampler, scorers, results.jsonl and report.html as
        `qwenimage eval`) on the held-out items; the overall means logged as eval/<metric> and kept by step."""
        from .eval.generate import Settings
        from .eval.run import evaluate
        from .eval.suites.base import get_suite

        v = self.cfg.validation
        if getattr(self, "_suite", None) is None:  # read (and checked) once per run
            suite = get_suite(v.suite)
            items = suite.load(v.suite_data).items
            items = items[:v.suite_limit] if v.suite_limit else items
            self._suite = (items, v.scorers or suite.default_scorers(items))
        items, scorers = self._suite
        settings = Settings(steps=v.steps, cfg=v.cfg, width=v.width, height=v.height, images_per_prompt=1,
                            negative_prompt=v.negative_prompt)
        summary = evaluate(pipe, items, scorers, out_dir, settings, suite=v.suite)
        overall = {k: val for k, val in (summary or {}).get("overall", {}).items() if val is not None}
        self.metrics.setdefault("eval", {})[str(self.step)] = overall
        log.info("evaluation (%s) at step %d: %s", v.suite, self.step,
                 ", ".join(f"{k} {val:.4f}" for k, val in overall.items()))
        if overall:
            self.record({f"eval/{k}": val for k, val in overall.items()})
        return summary

    def held_out_reward(self, scored) -> float:
        """RL: the mean reward of the validation images (held-out prompts), logged and kept by step in metrics."""
        rewards = self.objective.score([img for _, img in scored], [prompt for prompt, _ in scored])
        mean = sum(rewards) / len(rewards)
        self.metrics.setdefault("reward", {})[str(self.step)] = mean
        log.info("held-out reward at step %d: %.4f (%d images)", self.step, mean, len(rewards))
        self.record({"validation/reward": mean})
        return mean

    def _log_image(self, tag, img) -> None:
        if not any(t.name == "tensorboard" for t in self.acc.trackers):  # off, or not installed
            return
        import numpy as np

        tracker = self.acc.get_tracker("tensorboard", unwrap=True)
        tracker.add_image(tag, np.asarray(img), self.step, dataformats="HWC")


def trackers(cfg: Config) -> list[str]:
    """accelerate's trackers the config asks for and this environment has: TensorBoard, Weights & Biases. One asked
    for but not installed is said once and left out (metrics.jsonl has every figure anyway)."""
    import importlib.util

    out = []
    for name, module, on in (("tensorboard", "tensorboard", cfg.logging.tensorboard),
                             ("wandb", "wandb", cfg.logging.wandb)):
        if on and importlib.util.find_spec(module) is None:
            if name not in _SAID_MISSING:
                _SAID_MISSING.add(name)
                log.warning("logging.%s: the %s package is not installed (pip install %s); metrics go to "
                            "metrics.jsonl only", name, module, module)
        elif on:
            out.append(name)
    return out


_SAID_MISSING: set = set()


def validating(cfg: Config) -> bool:
    """Whether validation runs: fixed prompts to sample, or an evaluation suite to score."""
    return bool(cfg.validation.prompts or cfg.validation.suite)


def train(cfg: Config, resume=None) -> dict:
    return Trainer(cfg).run(resume=resume)
