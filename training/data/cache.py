"""Cache of VAE latents and text-encoder states in safetensors shards, so training never runs the VAE or the text
encoder once the cache is complete.

Layout of cache_dir:
  shard-00000.safetensors ...   tensors "<key>.latents" [16, 1, h, w]  normalised posterior mode at the bucket size
                                        "<key>.embeds"  [L, D]         text states, padding removed (mask = ones)
                                        "<key>.ref0" .. [16, 1, h', w'] normalised reference latents (edit triples)
  index.json                    {"version": 1, "entries": {key: {"shard", "size", "refs", "tokens"}}}

A key is sha256 over the bytes of the image and reference files, the caption and every CacheSettings field: a
changed image, caption or setting gives a new key, so only those samples are encoded again (old entries stay as
unreferenced garbage). Shards are written first, then the index, both atomically (temp file + rename), so an
interrupted build leaves an index of complete entries only. Build the cache in one process (rank 0) only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass

import torch
from PIL import Image, ImageOps

from ...qwenimage_core.images import calculate_dimensions, load_image, to_tensor
from ...qwenimage_core.weights import SafetensorsFile, save_file_atomic
from .buckets import bucket_size
from .dataset import DataError, image_size

log = logging.getLogger("qwenimage.training")
INDEX = "index.json"
VERSION = 1
EDIT_AREA = 1024 * 1024


@dataclass(frozen=True)
class CacheSettings:
    area: int = 1024 * 1024          # target bucket area in pixels
    step: int = 16                   # bucket sides are multiples of this
    template: str = "t2i"            # text template: "t2i", or "edit" / "edit_plus" for edit triples
    max_text_tokens: int | None = None  # caps t2i text states (the edit templates are never cut, as the reference)
    dtype: str = "bfloat16"          # storage dtype of latents and text states
    ref_area: int = EDIT_AREA        # reference latents: about this area at their own aspect (the pipeline's rule)
    model_id: str = ""               # fingerprint(vae) + fingerprint(text encoder), given by the caller

    def __post_init__(self):
        if self.template not in ("t2i", "edit", "edit_plus"):
            raise ValueError(f"cache template {self.template!r}: expected 't2i', 'edit' or 'edit_plus'")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"cache dtype {self.dtype!r}: expected 'float32', 'bfloat16' or 'float16'")
        if self.step % 16 or self.step <= 0 or self.area < self.step ** 2 or self.ref_area < 32 ** 2:
            raise ValueError(f"cache step {self.step} must be a positive multiple of 16 (8x VAE x 2x2 patches) and "
                             f"area {self.area} / ref_area {self.ref_area} at least one step / 32 pixels squared")

    def bucket(self, width: int, height: int) -> tuple[int, int]:
        return bucket_size(width, height, self.area, self.step)

    def ref_size(self, width: int, height: int) -> tuple[int, int]:
        return calculate_dimensions(self.ref_area, width / height)


# ---------------------------------------------------------------------------------------------------- keys

_hash_memo: dict[tuple, str] = {}


def file_hash(path: str) -> str:
    """sha256 of a file's bytes, memoised on (path, size, mtime_ns, inode): a file rewritten in place with the same
    size within the filesystem's timestamp resolution is not noticed (as make and rsync)."""
    st = os.stat(path)
    memo = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if memo not in _hash_memo:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _hash_memo[memo] = h.hexdigest()
    return _hash_memo[memo]


def sample_key(sample, settings: CacheSettings) -> str:
    h = hashlib.sha256(f"v{VERSION}".encode())
    for path in (sample.image, *sample.references):
        h.update(file_hash(path).encode())
    h.update(b"\0" + sample.caption.encode("utf-8") + b"\0")
    h.update(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
    return h.hexdigest()[:40]


def fingerprint(module) -> str:
    """A cheap stable id of a model: its class and config, parameter names and shapes, and the bytes of the first,
    middle and last parameter tensors. For CacheSettings.model_id."""
    inner = getattr(module, "model", module) if not isinstance(module, torch.nn.Module) else module
    h = hashlib.sha256(type(inner).__name__.encode())
    cfg = getattr(inner, "config", None)
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    elif hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    params = list(inner.named_parameters())
    for name, p in params:
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
    for _, p in [params[0], params[len(params) // 2], params[-1]] if params else []:
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- index

def _read_index(cache_dir, part: str = "entries") -> dict:
    """The index's entries ({key: entry}), or with part="failed" the samples a skip-mode build could not read
    ({key: reason}); a changed file gives a new key, so a repaired image is tried again."""
    path = os.path.join(cache_dir, INDEX)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable cache index ({e}); delete the cache folder") from None
    if d.get("version") != VERSION:
        raise DataError(f"{path}: cache index version {d.get('version')}, expected {VERSION}; delete the cache")
    return d.get(part, {})


def _write_index(cache_dir, entries: dict, failed: dict | None = None) -> None:
    path = os.path.join(cache_dir, INDEX)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"version": VERSION, "entries": entries, "failed": failed or {}}, fh)
    os.replace(tmp, path)


def missing(samples, settings: CacheSettings, cache_dir, on_error: str = "error") -> list[int]:
    """Indices of the samples with no cache entry (hashes and an index lookup; nothing is decoded). With
    on_error="skip", samples a previous build found unreadable count as done."""
    entries = _read_index(cache_dir)
    failed = _read_index(cache_dir, "failed") if on_error == "skip" else {}
    return [i for i, s in enumerate(samples) if (k := sample_key(s, settings)) not in entries and k not in failed]


# ---------------------------------------------------------------------------------------------------- build

def fit_image(path: str, width: int, height: int) -> Image.Image:
    """The image resized to cover (width, height) and centre-cropped to it, Lanczos (ImageOps.fit)."""
    return ImageOps.fit(load_image(path).convert("RGB"), (width, height), Image.LANCZOS)


def _encode_pixels(vae, images: list[torch.Tensor]) -> torch.Tensor:
    """[1, 3, H, W] tensors in [-1, 1] -> normalised posterior mode [B, 16, 1, H/8, W/8], float32 on the CPU.
    One image goes in as to_tensor made it, so it matches the pipeline's encode bit for bit (the convolutions'
    rounding depends on the memory layout); batches agree to float rounding."""
    pixels = images[0] if len(images) == 1 else torch.cat(images)
    z = vae.encode(pixels[:, :, None].to(vae.device, vae.dtype)).mode()
    return vae.normalize_latents(z).float().cpu()


def _groups(samples, todo, settings, batch_size):
    """Chunks of at most batch_size indices sharing target and reference sizes (they are stacked for the VAE)."""
    groups: dict[tuple, list[int]] = {}
    for i in todo:
        s = samples[i]
        refs = tuple(settings.ref_size(*image_size(r)) for r in s.references)
        groups.setdefault((settings.bucket(s.width, s.height), refs), []).append(i)
    for (size, refs), idx in groups.items():
        for j in range(0, len(idx), batch_size):
            yield size, refs, idx[j:j + batch_size]


def _load_inputs(sample, size, refs) -> tuple:
    """A sample's pixels: the target fitted to its bucket, the references at their sizes, and the references as
    images for the vision tower. Fully decoded here, so a file that passed the header check but is truncated
    fails now (ValueError naming it), before the batch is encoded."""
    target = to_tensor(fit_image(sample.image, *size), *size)
    images = [load_image(r) for r in sample.references]
    return target, [to_tensor(im, rw, rh) for im, (rw, rh) in zip(images, refs)], images


@torch.no_grad()
def _encode_group(batch, inputs, settings, vae, text_encoder) -> list[dict]:
    dtype = getattr(torch, settings.dtype)
    latents = _encode_pixels(vae, [target for target, _, _ in inputs])
    ref_latents = [_encode_pixels(vae, [refs[k] for _, refs, _ in inputs]) for k in range(len(inputs[0][1]))]
    kwargs = {"template": settings.template}
    if settings.template == "t2i":
        kwargs["max_sequence_length"] = min(settings.max_text_tokens or 1024, 1024)
    else:  # the vision tower sees the references resized as the edit pipelines do
        images = [images for _, _, images in inputs]
        kwargs.update(images=[i[0] for i in images] if settings.template == "edit" else images, resize_images=True)
    embeds, mask = text_encoder.encode([s.caption for s in batch], **kwargs)
    out = []
    for j in range(len(batch)):
        n = int(mask[j].sum())
        t = {"latents": latents[j], "embeds": embeds[j, :n].float().cpu()}
        t.update({f"ref{k}": r[j] for k, r in enumerate(ref_latents)})
        out.append({k: v.to(dtype).contiguous() for k, v in t.items()})
    return out


def _check_templates(samples, todo, template):
    want = {"t2i": (0, 0), "edit": (1, 1), "edit_plus": (1, 3)}[template]
    bad = [samples[i].image for i in todo if not want[0] <= len(samples[i].references) <= want[1]]
    if bad:
        raise DataError(f"template {template!r} takes {want[0]} to {want[1]} reference image(s); {len(bad)} "
                        f"sample(s) do not, e.g. {bad[0]}")


def build_cache(samples, cache_dir, settings: CacheSettings, vae, text_encoder, *, batch_size: int = 1,
                device="cpu", progress: bool = True, shard_size: int = 256, on_error: str = "error") -> int:
    """Encode the samples not yet cached; returns how many were encoded. Models are moved to `device` (None: left
    where they are). Every `shard_size` samples a shard is written, then the index; on an exception the samples
    finished so far are written too, so the cache only ever holds complete entries. A sample whose image cannot
    be decoded (a truncated JPEG passes the up-front header check) raises a DataError naming it, or with
    on_error="skip" is logged, recorded in the index as failed and left out (CachedDataset drops it)."""
    from tqdm.auto import tqdm

    if on_error not in ("skip", "error"):
        raise ValueError(f"on_error must be 'skip' or 'error', not {on_error!r}")
    os.makedirs(cache_dir, exist_ok=True)
    keys = [sample_key(s, settings) for s in samples]
    entries = _read_index(cache_dir)
    failed = _read_index(cache_dir, "failed")
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    todo = [i for i, k in enumerate(keys)
            if k not in entries and first[k] == i and not (on_error == "skip" and k in failed)]  # duplicates once
    if not todo:
        return 0
    _check_templates(samples, todo, settings.template)
    if device is not None:
        vae.to(device)
        text_encoder.to(device)
    shard_no = 1 + max((int(e["shard"][6:11]) for e in entries.values()), default=-1)
    pending: dict[str, torch.Tensor] = {}
    new: dict[str, dict] = {}
    done = 0

    failed_before = len(failed)

    def flush():
        nonlocal shard_no, pending, new
        if new:
            name = f"shard-{shard_no:05d}.safetensors"
            save_file_atomic(pending, os.path.join(cache_dir, name), {"format": "pt"})
            entries.update({k: {**v, "shard": name} for k, v in new.items()})
            shard_no += 1
        if new or len(failed) != failed_before:
            _write_index(cache_dir, entries, failed)
        pending, new = {}, {}

    def readable(i, size, refs):
        try:
            return _load_inputs(samples[i], size, refs)
        except (OSError, ValueError) as e:  # load_image names the file
            if on_error == "error":
                raise DataError(f"{samples[i].image}: cannot be cached: {e}") from None
            failed[keys[i]] = f"{samples[i].image}: {e}"
            log.warning("skipping sample at caching: %s", failed[keys[i]])
            return None

    bar = tqdm(total=len(todo), desc="caching latents", disable=not progress)
    try:
        for size, refs, group in _groups(samples, todo, settings, batch_size):
            loaded = {i: x for i in group if (x := readable(i, size, refs)) is not None}
            idx = list(loaded)
            bar.update(len(group) - len(idx))
            if not idx:
                continue
            encoded = _encode_group([samples[i] for i in idx], list(loaded.values()), settings, vae, text_encoder)
            for i, tensors in zip(idx, encoded):
                key = keys[i]
                failed.pop(key, None)
                pending.update({f"{key}.{name}": t for name, t in tensors.items()})
                new[key] = {"size": list(size), "refs": [list(r) for r in refs],
                            "tokens": tensors["embeds"].shape[0]}
                done += 1
            bar.update(len(idx))
            if len(new) >= shard_size:
                flush()
    finally:
        try:
            flush()  # keep what was finished, also when interrupted
        finally:
            bar.close()
    return done


# ------------------------------------------------------------------------------------------------- reading

class CachedDataset(torch.utils.data.Dataset):
    """The cached samples: item i -> dict(latents [16, 1, h, w], embeds [L, D], mask [L] (ones), references (list of
    [16, 1, h', w']; empty for t2i), weight (the sample's row weight), index i), float32. Shards are opened lazily
    with safetensors' safe_open; `sizes[i]` is sample i's bucket (w, h) for BucketBatchSampler."""

    def __init__(self, samples, cache_dir, settings: CacheSettings):
        self.samples, self.cache_dir, self.settings = list(samples), os.fspath(cache_dir), settings
        entries, failed = _read_index(self.cache_dir), _read_index(self.cache_dir, "failed")
        keys = [sample_key(s, settings) for s in self.samples]
        # samples a skip-mode build could not decode: left out, and said once (build_cache logged them too)
        self.skipped = [failed[k] for k in keys if k in failed and k not in entries]
        for reason in self.skipped:
            log.warning("left out (unreadable when cached): %s", reason)
        kept = [i for i, k in enumerate(keys) if k in entries or k not in failed]
        self.samples, self.keys = [self.samples[i] for i in kept], [keys[i] for i in kept]
        if not self.samples:
            raise DataError(f"no usable samples in the cache {self.cache_dir}: all {len(keys)} were unreadable")
        gone = [i for i, k in enumerate(self.keys) if k not in entries]
        if gone:
            raise DataError(f"{len(gone)} of {len(self.samples)} samples are not cached in {self.cache_dir} (first: "
                            f"{self.samples[gone[0]].image}); run build_cache with these settings first")
        self.entries = [entries[k] for k in self.keys]
        for shard in sorted({e["shard"] for e in self.entries}):
            if not os.path.exists(os.path.join(self.cache_dir, shard)):
                raise DataError(f"cache shard {shard} listed in {os.path.join(self.cache_dir, INDEX)} is missing")
        self.sizes = [tuple(e["size"]) for e in self.entries]
        self._handles: dict = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _shard(self, name):
        if name not in self._handles:  # the core's reader: a damaged shard is an error naming it
            self._handles[name] = SafetensorsFile(os.path.join(self.cache_dir, name))
        return self._handles[name]

    def __getitem__(self, i: int) -> dict:
        key, entry = self.keys[i], self.entries[i]
        f = self._shard(entry["shard"])
        embeds = f.get(f"{key}.embeds").float()
        return {"latents": f.get(f"{key}.latents").float(), "embeds": embeds,
                "mask": torch.ones(embeds.shape[0], dtype=torch.long),
                "references": [f.get(f"{key}.ref{k}").float() for k in range(len(entry["refs"]))],
                "weight": float(self.samples[i].weight), "index": i}

    def __getstate__(self):  # open shard handles do not cross into DataLoader workers
        return {**self.__dict__, "_handles": {}}


def collate(items: list[dict]) -> dict:
    """Stack a batch: latents [B, 16, 1, h, w]; embeds [B, Lmax, D] zero-padded with mask [B, Lmax]; references a
    list over reference slots of [B, 16, 1, h', w'] (a batch must share reference count and sizes: edit batches of
    one sample always do; buckets group targets only); weight [B]; index [B]."""
    lengths = [it["embeds"].shape[0] for it in items]
    embeds = items[0]["embeds"].new_zeros(len(items), max(lengths), items[0]["embeds"].shape[-1])
    mask = torch.zeros(len(items), max(lengths), dtype=torch.long)
    for j, (it, n) in enumerate(zip(items, lengths)):
        embeds[j, :n], mask[j, :n] = it["embeds"], it["mask"]
    sizes = {tuple(it["latents"].shape) for it in items}
    if len(sizes) > 1:
        raise DataError(f"samples {[it['index'] for it in items]} in one batch have different latent sizes "
                        f"{sorted(sizes)}; batch with BucketBatchSampler(dataset.sizes, ...)")
    shapes = {tuple(tuple(r.shape) for r in it["references"]) for it in items}
    if len(shapes) > 1:
        raise DataError(f"samples {[it['index'] for it in items]} in one batch have different reference counts or "
                        f"sizes {sorted(shapes)}; use batch size 1 for edit data with mixed reference sizes")
    return {"latents": torch.stack([it["latents"] for it in items]), "embeds": embeds, "mask": mask,
            "references": [torch.stack(r) for r in zip(*(it["references"] for it in items))],
            "weight": torch.tensor([it["weight"] for it in items], dtype=torch.float32),
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long)}
