"""The trainer's data layer: loading and validating datasets, aspect buckets and the batch sampler (weights,
distribution over ranks, resume), the latent / text-state cache, and the synthetic datasets.

The cache runs a tiny random VAE (ours, VAEConfig.tiny) and a tiny random Qwen2.5-VL with the real tokenizer."""
import copy
import dataclasses
import json
import logging
import math
import os
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from qwenimage.qwenimage_core.images import calculate_dimensions, load_image, to_tensor
from qwenimage.qwenimage_core.vae import QwenImageVAE, VAEConfig
from qwenimage.training.data import cache as cache_mod
from qwenimage.training.data.buckets import BucketBatchSampler, bucket_size, category_weights
from qwenimage.training.data.cache import CacheSettings, CachedDataset, build_cache, collate, fingerprint, missing
from qwenimage.training.data.dataset import DataError, Sample, load_samples
from qwenimage.training.data.synthetic import make_edit_dataset, make_shapes_dataset

AREA = 64 * 64  # tiny buckets: 64x64, 80x48, 48x80 latents of 8x8, 10x6, 6x10


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and threads that wait on each other are 100x slower on a busy
    machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------- loading

def test_folder_and_manifest_load_the_same_samples(tmp_path):
    made = make_shapes_dataset(tmp_path, n=12, seed=3, manifest=True, categories=True)
    samples, report = load_samples(tmp_path, report=True)
    assert report.loaded == 12 and report.num_skipped == 0
    assert [s.image for s in samples] == sorted(os.path.abspath(p) for p, _ in made)
    by_path = dict(made)
    for s in samples:
        assert s.caption == by_path[s.image] and s.category == os.path.basename(os.path.dirname(s.image))
        assert (s.width, s.height) == Image.open(s.image).size and s.references == () and s.weight == 1.0
    manifest = load_samples(tmp_path / "manifest.jsonl", kind="auto")
    assert manifest == samples  # same paths, captions, categories (the shape), sizes


def test_nested_folder_category_and_caption_ext(tmp_path):
    make_shapes_dataset(tmp_path / "a" / "b", n=2, seed=0)
    for p in (tmp_path / "a" / "b").glob("*.txt"):
        p.rename(p.with_suffix(".caption"))
    samples = load_samples(tmp_path, caption_ext=".caption")
    assert [s.category for s in samples] == ["a/b", "a/b"]


def _bad_folder(root):
    make_shapes_dataset(root, n=3, seed=1)
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (root / "corrupt.png").write_bytes(b"not an image at all")
    noisy.save(root / "truncated.png")
    data = (root / "truncated.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    noisy.save(root / "nocaption.png")
    noisy.save(root / "emptycaption.png")
    Image.new("RGB", (64, 32)).save(root / "small.png")
    for name, text in (("corrupt", "x"), ("truncated", "x"), ("emptycaption", "  \n"), ("small", "x")):
        (root / f"{name}.txt").write_text(text)
    return {"corrupt.png": "image", "truncated.png": "image", "nocaption.png": "caption",
            "emptycaption.png": "caption", "small.png": "image"}


def test_bad_folder_samples_are_skipped_or_refused(tmp_path, caplog):
    bad = _bad_folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="qwenimage.training"):
        samples, report = load_samples(tmp_path, report=True)
    assert len(samples) == 3 and report.num_skipped == len(bad)
    for name, field in bad.items():
        hits = [m for m in report.skipped if os.path.join(str(tmp_path), name) in m]
        assert len(hits) == 1 and f": {field}: " in hits[0], (name, report.skipped)
        assert any(name in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError) as e:
        load_samples(tmp_path, on_error="error")
    assert all(name in str(e.value) for name in bad) and f"{len(bad)} bad sample" in str(e.value)


def test_bad_manifest_lines_are_skipped_or_refused(tmp_path):
    make_shapes_dataset(tmp_path, n=1, seed=0)
    good = "0000.png"
    lines = [
        {"image": good, "caption": "ok", "weight": 2, "category": "c"},                    # 1 fine
        '{"image": "0000.png", "caption": ',                                                # 2 bad JSON
        {"caption": "x"},                                                                   # 3 image missing
        {"image": good},                                                                    # 4 caption missing
        {"image": good, "caption": 5},                                                      # 5 caption type
        {"image": good, "caption": "x", "weight": "2"},                                     # 6 weight type
        {"image": good, "caption": "x", "references": ["nope.png"]},                        # 7 reference missing
        {"image": "nope.png", "caption": "x"},                                              # 8 image missing
        {"image": good, "caption": "x", "references": good},                                # 9 references type
        [1, 2],                                                                             # 10 not an object
        {"image": good, "caption": "x", "weight": -1},                                      # 11 weight value
        {"image": good, "caption": "x", "references": [good] * 4},                          # 12 too many refs
        {"image": good, "caption": ""},                                                     # 13 empty caption
        {"image": good, "caption": "edit", "references": [good]},                           # 14 fine
    ]
    expect = {2: "json", 3: "image", 4: "caption", 5: "caption", 6: "weight", 7: "references[0]", 8: "image",
              9: "references", 10: "json", 11: "weight", 12: "references", 13: "caption"}
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(ln if isinstance(ln, str) else json.dumps(ln) for ln in lines) + "\n\n")
    samples, report = load_samples(path, report=True)
    assert len(samples) == 2 and report.num_skipped == len(expect)
    for line, field in expect.items():
        hits = [m for m in report.skipped if m.startswith(f"{path}:{line}: ")]
        assert len(hits) == 1 and hits[0].startswith(f"{path}:{line}: {field}"), (line, report.skipped)
    edit = [s for s in samples if s.references][0]
    assert edit.references == (str(tmp_path / good),) and edit.caption == "edit"
    plain = [s for s in samples if not s.references][0]
    assert plain.weight == 2.0 and plain.category == "c"
    with pytest.raises(DataError) as e:
        load_samples(path, on_error="error")
    assert all(f"{path}:{line}:" in str(e.value) for line in expect)


def test_relative_paths_resolve_against_base_dir(tmp_path):
    make_shapes_dataset(tmp_path / "imgs", n=1)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "d.jsonl").write_text(json.dumps({"image": "0000.png", "caption": "c"}))
    with pytest.raises(DataError):
        load_samples(tmp_path / "m" / "d.jsonl")  # resolves next to the manifest: not there, nothing left
    assert load_samples(tmp_path / "m" / "d.jsonl", base_dir=tmp_path / "imgs")[0].image == \
        str(tmp_path / "imgs" / "0000.png")


# ----------------------------------------------------------------------------------------------- buckets

@pytest.mark.parametrize("w,h", [(1024, 1024), (1920, 1080), (1080, 1920), (800, 600), (512, 2000), (5000, 500)])
def test_bucket_size(w, h):
    area = 1024 * 1024
    bw, bh = bucket_size(w, h, area)
    assert bw % 16 == 0 and bh % 16 == 0
    assert abs(bw * bh / area - 1) < 0.05
    ratio = min(max(w / h, 1 / 4), 4)  # extreme aspects are clamped to 1:4 .. 4:1
    assert abs(math.log(bw / bh / ratio)) < 0.03


def _sizes(n=40, seed=0):
    rng = np.random.default_rng(seed)
    choices = [(64, 64), (80, 48), (48, 80)]
    return [choices[k] for k in rng.choice(3, size=n, p=[0.5, 0.3, 0.2])]


def _take(sampler, k):
    it = iter(sampler)
    return [next(it) for _ in range(k)]


def test_batches_share_a_bucket_and_an_epoch_covers_each_sample_once():
    sizes = _sizes()
    sampler = BucketBatchSampler(sizes, 4, seed=1)
    epoch = _take(sampler, len(sampler))
    assert all(len(b) == 4 and len({sizes[i] for i in b}) == 1 for b in epoch)
    flat = [i for b in epoch for i in b]
    assert len(flat) == len(set(flat))  # no repeats within an epoch
    count = Counter(sizes)
    assert len(sampler) == sum(c // 4 for c in count.values()) and sampler.state_dict()["epoch"] == 0
    # the next epoch is another order, and deterministic from the seed
    nxt = _take(sampler, len(sampler))
    assert nxt != epoch and epoch == _take(BucketBatchSampler(sizes, 4, seed=1), len(sampler))
    assert epoch != _take(BucketBatchSampler(sizes, 4, seed=2), len(sampler))


def test_drop_last_false_pads_within_the_bucket():
    sizes = _sizes()
    sampler = BucketBatchSampler(sizes, 4, seed=0, drop_last=False)
    epoch = _take(sampler, len(sampler))
    assert all(len(b) == 4 and len({sizes[i] for i in b}) == 1 for b in epoch)
    assert {i for b in epoch for i in b} == set(range(len(sizes)))  # every sample seen


def test_weighted_sampling_follows_category_weights():
    samples = [Sample(f"{c}{i}.png", "x", category=c) for c, n in (("a", 30), ("b", 10)) for i in range(n)]
    w = category_weights(samples, {"a": 1.0, "b": 3.0})
    assert math.isclose(sum(w[:30]) / sum(w), 0.25)
    sampler = BucketBatchSampler([(64, 64)] * 30 + [(48, 80)] * 10, 4, weights=w, seed=0)
    drawn = [i for b in _take(sampler, 600) for i in b]
    share_b = sum(i >= 30 for i in drawn) / len(drawn)
    assert abs(share_b - 0.75) < 0.04, share_b
    assert len(set(drawn)) == 40  # every sample drawn, with replacement
    # the row weight multiplies in; unknown categories are refused
    rows = [Sample("a.png", "x", weight=3.0), Sample("b.png", "x")]
    assert category_weights(rows) == [1.5, 0.5]
    with pytest.raises(ValueError, match="'b'"):
        category_weights(samples, {"a": 1.0})


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_split_the_one_process_global_batch(weighted, drop_last):
    sizes = _sizes(50, seed=4)
    weights = list(np.linspace(0.5, 2.0, len(sizes))) if weighted else None
    one = BucketBatchSampler(sizes, 6, weights=weights, seed=7, drop_last=drop_last)
    ranks = [BucketBatchSampler(sizes, 2, weights=weights, seed=7, num_replicas=3, rank=r, drop_last=drop_last)
             for r in range(3)]
    steps = 2 * len(one) + 3  # across epoch boundaries
    per_rank = [_take(s, steps) for s in ranks]
    for k, glob in enumerate(_take(one, steps)):
        assert sum((per_rank[r][k] for r in range(3)), []) == glob
        assert all(len(per_rank[r][k]) == 2 for r in range(3))


@pytest.mark.parametrize("weighted", [False, True])
def test_sampler_resume_continues_with_the_next_batch(weighted):
    sizes = _sizes()
    weights = [1.0 + (i % 3) for i in range(len(sizes))] if weighted else None
    make = lambda: BucketBatchSampler(sizes, 2, weights=weights, seed=5, num_replicas=2, rank=1)  # noqa: E731
    full = _take(make(), 40)
    for k in (0, 3, len(make()), 25):  # including an epoch boundary
        a = make()
        assert _take(a, k) == full[:k]
        state = json.loads(json.dumps(a.state_dict()))  # survives a JSON checkpoint
        b = make()
        b.load_state_dict(state)
        assert _take(b, 40 - k) == full[k:]
        c = make()
        c.load_state_dict(a.state_for(k))  # the same state from a consumed-batch count (DataLoader prefetching)
        assert _take(c, 5) == full[k:k + 5]


def test_sampler_refuses_an_impossible_batch():
    with pytest.raises(ValueError, match="no bucket"):
        BucketBatchSampler([(64, 64)] * 3, 4)
    with pytest.raises(ValueError):
        BucketBatchSampler([(64, 64)] * 8, 2, num_replicas=2, rank=2)


# ----------------------------------------------------------------------------------------------- synthetic

def test_synthetic_datasets_are_deterministic(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", n=9, seed=11)
    b = make_shapes_dataset(tmp_path / "b", n=9, seed=11)
    c = make_shapes_dataset(tmp_path / "c", n=9, seed=12)
    assert [x[1] for x in a] == [x[1] for x in b]
    assert all(open(p, "rb").read() == open(q, "rb").read() for (p, _), (q, _) in zip(a, b))
    assert [open(p, "rb").read() for p, _ in a] != [open(p, "rb").read() for p, _ in c]
    assert len({Image.open(p).size for p, _ in a}) > 1  # several aspects, so several buckets
    assert all(cap.split()[1] in ("red", "green", "blue", "yellow", "purple", "orange") for _, cap in a)
    triples = make_edit_dataset(tmp_path / "e", n=3, seed=0)
    for ref, instruction, target in triples:
        assert instruction.startswith("make it ") and Image.open(ref).size == Image.open(target).size
        assert open(ref, "rb").read() != open(target, "rb").read()
    samples = load_samples(tmp_path / "e" / "manifest.jsonl")
    assert sorted((s.references[0], s.caption, s.image) for s in samples) == sorted(triples)


# ----------------------------------------------------------------------------------------------- the cache

@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return QwenImageVAE(VAEConfig.tiny()).eval()


@pytest.fixture(scope="module")
def encoder(tokenizer):
    from _tiny import tiny_text_encoder
    from qwenimage.qwenimage_core.text_encoder import QwenTextEncoder, default_image_processor

    return QwenTextEncoder(tiny_text_encoder(len(tokenizer)), tokenizer, default_image_processor())


def _settings(**kw):
    return CacheSettings(**{"area": AREA, "ref_area": AREA, "dtype": "float32", **kw})


def _direct_latents(vae, path, size):
    x = to_tensor(ImageOps.fit(Image.open(path).convert("RGB"), size, Image.LANCZOS), *size)
    with torch.no_grad():
        return vae.normalize_latents(vae.encode(x[:, :, None]).mode())[0]


def _touch_later(path):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


@pytest.fixture()
def shapes(tmp_path):
    make_shapes_dataset(tmp_path / "data", n=6, seed=2)
    return load_samples(tmp_path / "data")


def test_cache_round_trip_matches_direct_encoding(shapes, tmp_path, vae, encoder):
    settings = _settings(model_id=fingerprint(vae) + fingerprint(encoder))
    cache = tmp_path / "cache"
    assert missing(shapes, settings, cache) == list(range(6))
    assert build_cache(shapes, cache, settings, vae, encoder, progress=False) == 6
    assert missing(shapes, settings, cache) == [] and build_cache(shapes, cache, settings, vae, encoder) == 0
    assert build_cache(shapes[:1] * 2, tmp_path / "dup", settings, vae, encoder, progress=False) == 1
    with pytest.raises(ValueError, match="dtype"):
        _settings(dtype="fp8")
    ds = CachedDataset(shapes, cache, settings)
    assert ds.sizes == [bucket_size(s.width, s.height, AREA) for s in shapes] and len(set(ds.sizes)) > 1
    for i, s in enumerate(shapes):
        item = ds[i]
        w, h = ds.sizes[i]
        assert item["latents"].shape == (16, 1, h // 8, w // 8) and item["latents"].dtype == torch.float32
        assert torch.equal(item["latents"], _direct_latents(vae, s.image, (w, h)))
        embeds, mask = encoder.encode([s.caption])
        n = int(mask.sum())
        assert torch.equal(item["embeds"], embeds[0, :n]) and torch.equal(item["mask"], torch.ones(n).long())
        assert item["references"] == [] and item["index"] == i and item["weight"] == 1.0
    # a batched build gives the same entries up to float rounding
    assert build_cache(shapes, tmp_path / "batched", settings, vae, encoder, batch_size=3, progress=False) == 6
    other = CachedDataset(shapes, tmp_path / "batched", settings)
    for i in range(6):
        assert torch.allclose(other[i]["latents"], ds[i]["latents"], atol=1e-5)
        assert torch.allclose(other[i]["embeds"], ds[i]["embeds"], atol=1e-5)


def test_changed_image_caption_or_setting_recaches_only_those(shapes, tmp_path, vae, encoder):
    settings, cache = _settings(), tmp_path / "cache"
    build_cache(shapes, cache, settings, vae, encoder, progress=False)
    # new bytes in one image
    Image.new("RGB", (shapes[1].width, shapes[1].height), (1, 2, 3)).save(shapes[1].image)
    _touch_later(shapes[1].image)
    assert missing(shapes, settings, cache) == [1]
    # a new caption for another
    changed = list(shapes)
    changed[4] = dataclasses.replace(shapes[4], caption="a different caption")
    assert missing(changed, settings, cache) == [1, 4]
    assert build_cache(changed, cache, settings, vae, encoder, progress=False) == 2
    ds = CachedDataset(changed, cache, settings)
    assert torch.equal(ds[1]["latents"], _direct_latents(vae, shapes[1].image, ds.sizes[1]))
    # a changed setting re-caches all; bfloat16 storage holds the rounded direct encoding
    bf16 = _settings(dtype="bfloat16")
    assert missing(changed, bf16, cache) == list(range(6))
    assert build_cache(changed, cache, bf16, vae, encoder, progress=False) == 6
    item = CachedDataset(changed, cache, bf16)[0]
    assert torch.equal(item["latents"], _direct_latents(vae, shapes[0].image, ds.sizes[0]).bfloat16().float())
    assert missing(changed, settings, cache) == []  # the old entries stay valid


def test_incomplete_cache_is_refused(shapes, tmp_path, vae, encoder):
    settings, cache = _settings(), tmp_path / "cache"
    build_cache(shapes[:4], cache, settings, vae, encoder, progress=False)
    with pytest.raises(DataError, match="2 of 6 samples are not cached"):
        CachedDataset(shapes, cache, settings)


def test_collate_pads_text_and_stacks(shapes, tmp_path, vae, encoder):
    settings, cache = _settings(), tmp_path / "cache"
    same = [s for s in shapes if bucket_size(s.width, s.height, AREA) == (64, 64)][:2]
    assert len(same) == 2
    same[1] = dataclasses.replace(same[1], caption=same[1].caption + ", seen from far away on a sunny day")
    build_cache(same, cache, settings, vae, encoder, progress=False)
    ds = CachedDataset(same, cache, settings)
    a, b = ds[0], ds[1]
    batch = collate([a, b])
    la, lb = a["embeds"].shape[0], b["embeds"].shape[0]
    assert lb > la and batch["embeds"].shape == (2, lb, a["embeds"].shape[1])
    assert batch["mask"][0].tolist() == [1] * la + [0] * (lb - la) and batch["mask"][1].sum() == lb
    assert torch.equal(batch["embeds"][0, :la], a["embeds"]) and batch["embeds"][0, la:].abs().sum() == 0
    assert torch.equal(batch["latents"][1], b["latents"]) and batch["latents"].shape == (2, 16, 1, 8, 8)
    assert batch["index"].tolist() == [0, 1] and batch["weight"].tolist() == [1.0, 1.0]
    assert batch["references"] == []
    # through a DataLoader with the bucket sampler (the trainer's path)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=BucketBatchSampler(ds.sizes, 2), collate_fn=collate,
                                         num_workers=1)
    assert next(iter(loader))["latents"].shape == (2, 16, 1, 8, 8)
    assert torch.equal(copy.deepcopy(ds)[1]["embeds"], b["embeds"])  # open shard handles are not copied


class _Boom(Exception):
    pass


class _FailingEncoder:
    """Encodes `ok` batches, then raises (an interrupted build)."""

    def __init__(self, inner, ok):
        self.inner, self.ok = inner, ok

    def to(self, *a, **k):
        return self

    def encode(self, *a, **k):
        if self.ok == 0:
            raise _Boom
        self.ok -= 1
        return self.inner.encode(*a, **k)


def test_interrupted_build_keeps_only_complete_entries(shapes, tmp_path, vae, encoder):
    settings, cache = _settings(), tmp_path / "cache"
    with pytest.raises(_Boom):  # finished samples are flushed on the way out
        build_cache(shapes, cache, settings, vae, _FailingEncoder(encoder, 3), progress=False)
    assert len(missing(shapes, settings, cache)) == 3
    # a failure while writing a shard leaves the index of the shards written before it
    cache2 = tmp_path / "cache2"
    real, calls = cache_mod.save_file_atomic, []

    def flaky(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) > 1:
            raise _Boom
        real(tensors, path, metadata)

    cache_mod.save_file_atomic = flaky
    try:
        with pytest.raises(_Boom):
            build_cache(shapes, cache2, settings, vae, encoder, progress=False, shard_size=2)
    finally:
        cache_mod.save_file_atomic = real
    index = json.loads((cache2 / "index.json").read_text())
    assert len(index["entries"]) == 2 and {e["shard"] for e in index["entries"].values()} == {"shard-00000.safetensors"}
    assert sorted(os.listdir(cache2)) == ["index.json", "shard-00000.safetensors"]
    done = [i for i in range(6) if i not in missing(shapes, settings, cache2)]
    CachedDataset([shapes[i] for i in done], cache2, settings)[1]  # the complete entries read back
    # resuming encodes the rest, into new shards
    assert build_cache(shapes, cache2, settings, vae, encoder, progress=False) == 4
    ds = CachedDataset(shapes, cache2, settings)
    assert torch.equal(ds[5]["latents"], _direct_latents(vae, shapes[5].image, ds.sizes[5]))


def test_edit_triples_cache_their_references(tmp_path, vae, encoder):
    make_edit_dataset(tmp_path / "edit", n=2, seed=1)
    samples = load_samples(tmp_path / "edit" / "manifest.jsonl")
    settings, cache = _settings(template="edit_plus"), tmp_path / "cache"
    with pytest.raises(DataError, match="reference"):
        build_cache(load_samples(tmp_path / "edit" / "manifest.jsonl"), cache, _settings(), vae, encoder)
    assert build_cache(samples, cache, settings, vae, encoder, progress=False) == 2
    ds = CachedDataset(samples, cache, settings)
    for i, s in enumerate(samples):
        item = ds[i]
        ref = load_image(s.references[0])
        rw, rh = calculate_dimensions(AREA, ref.width / ref.height)
        assert len(item["references"]) == 1 and item["references"][0].shape == (16, 1, rh // 8, rw // 8)
        with torch.no_grad():
            direct = vae.normalize_latents(vae.encode(to_tensor(ref, rw, rh)[:, :, None]).mode())[0]
        assert torch.equal(item["references"][0], direct)
        assert torch.equal(item["latents"], _direct_latents(vae, s.image, ds.sizes[i]))
        embeds, mask = encoder.encode([s.caption], images=[[ref]], template="edit_plus", resize_images=True)
        assert torch.equal(item["embeds"], embeds[0, :int(mask.sum())])
    batch = collate([ds[0]])
    assert len(batch["references"]) == 1 and batch["references"][0].shape[0] == 1
    # the "edit" template: one reference, seen by the vision tower at about a megapixel
    edit = _settings(template="edit")
    assert build_cache(samples[:1], cache, edit, vae, encoder, progress=False) == 1
    ref = load_image(samples[0].references[0])
    embeds, mask = encoder.encode([samples[0].caption], images=[ref], template="edit", resize_images=True)
    assert torch.equal(CachedDataset(samples[:1], cache, edit)[0]["embeds"], embeds[0, :int(mask.sum())])


def test_max_text_tokens_caps_t2i_states(shapes, tmp_path, vae, encoder):
    settings = _settings(max_text_tokens=3)
    build_cache(shapes[:2], tmp_path / "cache", settings, vae, encoder, progress=False)
    assert [it["embeds"].shape[0] for it in CachedDataset(shapes[:2], tmp_path / "cache", settings)] == [3, 3]


def test_fingerprint_is_stable_and_sees_weights(vae, encoder):
    assert fingerprint(vae) == fingerprint(vae) and fingerprint(encoder) == fingerprint(encoder)
    torch.manual_seed(1)
    other = QwenImageVAE(VAEConfig.tiny()).eval()
    assert fingerprint(other) != fingerprint(vae)
    assert fingerprint(QwenImageVAE(VAEConfig.tiny(base_dim=16))) != fingerprint(vae)
