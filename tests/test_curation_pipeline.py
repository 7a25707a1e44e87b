"""Curation spine: sources (folder, manifest, tar), pipeline config and overrides, the sharded engine (local pool,
Ray, resume, global ops), outputs and the HTML report. Toy ops registered here stand in for the real families."""
import io
import json
import os
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from qwenimage.training.data.curation import engine, pipeline as pl
from qwenimage.training.data.curation.op import GlobalOp, Op, register
from qwenimage.training.data.curation.sources import read_inputs


@register("toy_size")
class ToySize(Op):
    stats = ("width", "height", "short_side")

    def compute(self, item):
        w, h = item.pil.size
        return {"width": w, "height": h, "short_side": min(w, h)}


@register("toy_luma")
class ToyLuma(Op):
    stats = ("toy_luma",)
    calls = 0
    stop_after = None   # raise a KeyboardInterrupt at this call: a run killed halfway

    def compute(self, item):
        type(self).calls += 1
        if self.stop_after is not None and type(self).calls > self.stop_after:
            raise KeyboardInterrupt
        return {"toy_luma": float(item.gray.mean())}


@register("toy_caption")
class ToyCaption(Op):
    stats = ("caption_empty",)
    default_drop_if = {"caption_empty": True}

    def compute(self, item):
        return {"caption_empty": not (item.caption or "").strip()}


@register("toy_dup")
class ToyDup(GlobalOp):
    """Same colour bucket = duplicate; the first key of a bucket is kept."""
    stats = ("toy_bucket",)

    def compute(self, item):
        return {"toy_bucket": int(np.asarray(item.small).reshape(-1, 3).mean(0).round().astype(int) @ [65536, 256, 1])}

    def decide_all(self, records):
        first, out = {}, {}
        for r in records:
            b = r.stats["toy_bucket"]
            if b in first:
                out[r.key] = f"exact duplicate of {first[b]}"
            else:
                first[b] = r.key
        return out


def _png(color, size=(40, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _raw(**over):
    raw = {"name": "toy", "shard_size": 3, "stage": [
        {"name": "s1", "title": "size and duplicates", "ops": [
            {"op": "toy_size", "keep": {"short_side": [24, float("inf")]}}, {"op": "toy_dup"}]},
        {"name": "s2", "ops": [{"op": "toy_luma", "keep": {"toy_luma": [0.05, 0.95]}}, {"op": "toy_caption"}]}]}
    raw.update(over)
    return raw


@pytest.fixture
def data(tmp_path):
    """A folder, a manifest and a tar, each with good samples and bad ones."""
    root = tmp_path / "raw"
    (root / "cats").mkdir(parents=True)
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 120, 40), (60, 140, 160), (150, 60, 150)]
    for i, c in enumerate(colors):
        (root / f"img{i}.png").write_bytes(_png(c))
        (root / f"img{i}.txt").write_text(f"a picture number {i}")
    (root / "cats" / "cat.png").write_bytes(_png((90, 90, 90)))
    (root / "cats" / "cat.json").write_text(json.dumps({"caption": "a grey cat", "source_url": "x"}))
    (root / "zdup.png").write_bytes(_png((200, 30, 30)))              # duplicate of img0
    (root / "zdup.txt").write_text("the same red")
    (root / "black.png").write_bytes(_png((0, 0, 0)))                # too dark
    (root / "black.txt").write_text("night")
    (root / "tiny.png").write_bytes(_png((10, 100, 200), (16, 16)))  # too small
    (root / "tiny.txt").write_text("tiny")
    (root / "nocap.png").write_bytes(_png((20, 180, 90)))            # no caption
    (root / "trunc.png").write_bytes(_png((1, 2, 3))[:60])           # truncated
    (root / "trunc.txt").write_text("cut")
    (root / "text.png").write_bytes(b"this is not an image")         # not an image
    (root / "text.txt").write_text("words")
    (root / "badside.png").write_bytes(_png((5, 60, 5)))
    (root / "badside.json").write_text("{not json")                  # malformed caption sidecar

    man = tmp_path / "list.jsonl"
    (tmp_path / "m.png").write_bytes(_png((250, 200, 20)))
    man.write_text("\n".join([json.dumps({"image": "m.png", "caption": "yellow", "category": "flat", "weight": 2.0,
                                          "origin": "web"}),
                              "{broken json",
                              json.dumps({"caption": "no image field"}),
                              json.dumps({"image": "missing.png", "caption": "gone"})]) + "\n")

    tar = tmp_path / "shard.tar"
    with tarfile.open(tar, "w") as tf:
        for name, data in [("a/0001.png", _png((10, 220, 220))), ("a/0001.txt", b"cyan"),
                           ("a/0002.png", _png((220, 120, 10))[:50]), ("a/0002.txt", b"cut member"),
                           ("a/0003.png", _png((100, 20, 60))),
                           ("a/0003.json", json.dumps({"caption": "wine"}).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return [root, man, tar]


EXPECTED_BAD = {  # key suffix -> reason fragment: every bad file is listed with its reason
    "trunc.png": "broken", "text.png": "broken", "badside.png": "source: caption", "list.jsonl:2": "source: json",
    "list.jsonl:3": "source: row", "missing.png": "broken", "0002.png": "broken", "tiny.png": "toy_size: short_side",
    "zdup.png": "toy_dup: exact duplicate of", "black.png": "toy_luma: toy_luma", "nocap.png": "toy_caption"}


def _run(data, out, **kw):
    return engine.curate(data, str(out), pl.load_pipeline(kw.pop("raw", _raw())), progress=False, **kw)


def test_sources_read_every_kind_and_name_bad_rows(data):
    recs = {os.path.basename(r.key): r for r in read_inputs(data)}
    assert recs["cat.png"].caption == "a grey cat"
    assert recs["cat.png"].meta == {"category": "cats", "source_url": "x"}
    assert recs["m.png"].meta == {"category": "flat", "weight": 2.0, "origin": "web"}
    assert recs["0003.png"].caption == "wine" and recs["0003.png"].image.endswith("shard.tar::a/0003.png")
    assert recs["nocap.png"].caption is None
    assert recs["list.jsonl:2"].dropped == ("source: json: line 2: not valid JSON: a key is not in double quotes "
                                            "(or a comma is extra) at column 2")   # in words, not json's message
    assert recs["badside.png"].dropped.endswith("badside.json: not valid JSON: a key is not in double quotes (or a "
                                                "comma is extra) at line 1 column 2")
    assert "image" in recs["list.jsonl:3"].dropped
    assert [r.key for r in read_inputs(data)] == sorted(r.key for r in read_inputs(data))


def _finishes(fn, *args):
    """fn(*args) in a thread: a FIFO that is opened blocks forever, so a regression hangs there, not the suite."""
    import threading

    box = {}

    def call():
        try:
            box["value"] = fn(*args)
        except Exception as e:
            box["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(120)
    assert box, f"{fn.__name__} did not return: it opened a FIFO or read a device"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifos_devices_and_oversized_files_are_never_read(tmp_path, monkeypatch):
    from qwenimage.training.data.curation import sources

    root = tmp_path / "raw"
    root.mkdir()
    (root / "good.png").write_bytes(_png((40, 90, 200)))
    os.mkfifo(root / "fifo.png")
    os.symlink("/dev/zero", root / "zero.jpg")
    (root / "capfifo.png").write_bytes(_png((40, 90, 20)))
    os.mkfifo(root / "capfifo.txt")                       # the caption beside a good image is a FIFO
    (root / "big.png").write_bytes(_png((9, 9, 9)) + bytes(5000))
    monkeypatch.setattr(sources, "MAX_IMAGE_BYTES", 4000)   # stands for a file over the 1 GiB cap
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "raw/zero.jpg", "caption": "c"}) + "\n")

    recs = {os.path.basename(r.key): r for r in _finishes(read_inputs, [root])}
    assert recs["good.png"].dropped is None
    assert recs["fifo.png"].dropped == "source: image: a FIFO, not a regular file; not opened"
    assert recs["zero.jpg"].dropped == "source: image: a device, not a regular file; not opened"
    assert "capfifo.txt: a FIFO, not a regular file" in recs["capfifo.png"].dropped
    assert "over the" in recs["big.png"].dropped
    # a manifest's row naming a device reaches the decoder as a read error: dropped "broken", not read
    out = tmp_path / "out"
    _finishes(_run, [tmp_path / "m.jsonl"], out)
    reason = json.loads((out / "dropped.jsonl").read_text())["reason"]
    assert reason.startswith("broken: cannot read") and "a device, not a regular file" in reason
    # the same as INPUTs: an error naming them, before anything runs
    for bad, why in ((root / "fifo.png", "a FIFO"), (root / "zero.jpg", "a device"), (tmp_path / "no.png", "not found")):
        with pytest.raises(sources.SourceError, match=why):
            _finishes(read_inputs, [bad])


def test_a_single_image_file_is_one_sample_not_a_manifest(data, tmp_path):
    image = data[0] / "cats" / "cat.png"
    [rec] = read_inputs([image])
    assert (rec.key, rec.caption, rec.dropped) == (str(image), "a grey cat", None)
    assert rec.meta == {"source_url": "x"}
    totals = _run([image], tmp_path / "out", workers=1)
    assert totals["records"] == 1 and totals["source"]["dropped"] == 0


def test_small_sets_are_cut_so_every_worker_has_shards(data, tmp_path):
    raw = _raw()
    del raw["shard_size"]                                   # the default, 256, would be one shard for 20 records
    n = _run(data, tmp_path / "out", workers=2, raw=raw)["records"]
    size = -(-n // (2 * engine.SHARDS_PER_WORKER))
    assert len(os.listdir(tmp_path / "out" / "shards" / "p0")) == -(-n // size) >= 2 * engine.SHARDS_PER_WORKER - 1
    _run(data, tmp_path / "out", workers=1, raw=raw)        # a rerun on another worker count resumes those shards
    assert json.load(open(tmp_path / "out" / "shards" / "plan.json"))["shard_size"] == size


def test_bad_files_are_dropped_listed_and_counted(data, tmp_path):
    out = tmp_path / "out"
    totals = _run(data, out, workers=1)
    dropped = {os.path.basename(d["key"]): d for d in map(json.loads, open(out / "dropped.jsonl"))}
    for name, why in EXPECTED_BAD.items():
        assert why in dropped[name]["reason"], (name, dropped[name])
    assert len(dropped) == len(EXPECTED_BAD)
    assert dropped["black.png"]["stage"] == "s2" and dropped["zdup.png"]["stage"] == "s1"
    rows = [json.loads(line) for line in open(out / "manifest.jsonl")]
    assert len(rows) == totals["kept"] == 10
    by_name = {os.path.basename(r["image"]): r for r in rows}
    assert by_name["m.png"]["weight"] == 2.0 and by_name["m.png"]["category"] == "flat"
    assert by_name["cat.png"]["category"] == "cats" and by_name["img1.png"]["category"] == "default"
    assert by_name["0001.png"]["image"] == os.path.join("images", "shard", "a", "0001.png")
    assert (out / "images" / "shard" / "a" / "0001.png").read_bytes() == _png((10, 220, 220))
    assert set(by_name["img1.png"]["stats"]) == {"width", "height", "short_side", "toy_bucket", "toy_luma",
                                                 "caption_empty"}
    # counts: the funnel adds up, per op by reason class
    s1, s2 = totals["stages"]
    assert totals["source"]["dropped"] == 3 and totals["source"]["reasons"]["source json"] == 1
    assert s1["in"] == totals["records"] - 3 and s1["kept"] == s2["in"] and s2["kept"] == totals["kept"]
    size, dup = s1["ops"]
    assert size["reasons"] == {"broken": 4, "short_side < 24": 1} and dup["reasons"] == {"exact duplicate": 1}
    assert s2["ops"][0]["reasons"] == {"toy_luma < 0.05": 1} and s2["ops"][1]["reasons"] == {"caption_empty": 1}
    assert json.load(open(out / "counts.json")) == totals


def test_manifest_loads_in_the_trainer(data, tmp_path):
    from qwenimage.training.data.dataset import load_samples

    _run(data, tmp_path / "out", workers=1)
    samples = load_samples(tmp_path / "out" / "manifest.jsonl", min_size=16, on_error="error")
    assert len(samples) == 10 and {s.category for s in samples} >= {"cats", "flat", "default"}


@register("toy_needs_caption")
class ToyNeedsCaption(Op):
    """Drops everything it judges: only samples with a caption are judged."""
    stats = ("judged",)
    needs_caption = True
    default_drop_if = {"judged": True}

    def compute(self, item):
        return {"judged": True}


def test_caption_ops_pass_samples_without_a_caption():
    from qwenimage.training.data.curation.op import Item, Record, build_op, run_op

    recs = [Record("a", "a.png", caption="a cat"), Record("b", "b.png", caption=None), Record("c", "c.png", caption=" ")]
    run_op(build_op({"op": "toy_needs_caption"}), [Item(r, b"") for r in recs])
    assert [r.dropped for r in recs] == ["toy_needs_caption: judged=True", None, None]
    assert recs[1].stats == {} and recs[2].stats == {}


def test_a_curated_manifest_curated_again_keeps_its_earlier_statistics(data, tmp_path):
    _run(data, tmp_path / "out", workers=1)
    raw = {"name": "again", "stage": [{"name": "s", "ops": [{"op": "toy_caption"}]}]}
    _run([str(tmp_path / "out" / "manifest.jsonl")], tmp_path / "again", workers=1, raw=raw)
    rows = [json.loads(line) for line in (tmp_path / "again" / "manifest.jsonl").read_text().splitlines()]
    assert rows and all({"toy_luma", "caption_empty", "width"} <= set(r["stats"]) for r in rows)


def test_workers_one_two_and_ray_write_the_same_manifest(data, tmp_path, monkeypatch):
    for w in (1, 2):
        _run(data, tmp_path / f"w{w}", workers=w)
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the toy ops travel to Ray's workers
    try:
        _run(data, tmp_path / "ray", workers=2, ray=True)   # ray.init(num_cpus=2), as the issue asks
    finally:
        ray.shutdown()
    one = (tmp_path / "w1" / "manifest.jsonl").read_bytes()
    assert one.count(b"\n") == 10
    for other in ("w2", "ray"):
        assert (tmp_path / other / "manifest.jsonl").read_bytes() == one, other
        assert (tmp_path / other / "counts.json").read_bytes() == (tmp_path / "w1" / "counts.json").read_bytes()
        assert (tmp_path / other / "dropped.jsonl").read_bytes() == (tmp_path / "w1" / "dropped.jsonl").read_bytes()


def test_a_killed_run_resumes_without_redoing_finished_shards(data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    ToyLuma.calls = 0
    monkeypatch.setattr(ToyLuma, "stop_after", 4)
    with pytest.raises(KeyboardInterrupt):
        _run(data, out, workers=1)
    finished = sorted((out / "shards" / "p1").glob("*.jsonl"))
    assert finished and not (out / "manifest.jsonl").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in finished}
    monkeypatch.setattr(ToyLuma, "stop_after", None)
    ToyLuma.calls = 0
    _run(data, out, workers=1)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())   # not rewritten
    done_live = sum(1 for p in finished for r in engine.read_shard(str(p))[0] if "toy_luma" in r.stats)
    assert ToyLuma.calls == 12 - done_live   # 12 samples reach toy_luma; the finished shards' are not measured again
    _run(data, tmp_path / "fresh", workers=1)
    assert (out / "manifest.jsonl").read_bytes() != b""
    assert (out / "counts.json").read_bytes() == (tmp_path / "fresh" / "counts.json").read_bytes()
    # a rerun with another pipeline refuses the old shards instead of mixing them in
    with pytest.raises(engine.CurationError, match="shard_size"):
        _run(data, out, workers=1, shard_size=5)


def test_global_op_decides_after_every_shard_before_later_ops(data, tmp_path):
    """toy_dup sits mid-pipeline: the duplicate found across shards is dropped before toy_luma measures it."""
    ToyLuma.calls = 0
    totals = _run(data, tmp_path / "out", workers=1, raw=_raw(shard_size=2))
    dup = {json.loads(line)["key"]: json.loads(line) for line in open(tmp_path / "out" / "dropped.jsonl")}
    d = next(v for k, v in dup.items() if k.endswith("zdup.png"))
    assert "toy_luma" not in d["stats"] and d["reason"].endswith("img0.png")
    assert ToyLuma.calls == totals["stages"][1]["in"] == totals["stages"][0]["kept"]


def test_report_has_funnel_histograms_thresholds_and_samples(data, tmp_path):
    _run(data, tmp_path / "out", workers=1)
    page = (tmp_path / "out" / "report.html").read_text()
    for stat in ("short_side", "toy_luma", "width"):
        assert f"<h3>{stat}</h3><svg" in page
    assert page.count('class="threshold"') == 3   # short_side >= 24 (inf not drawn); toy_luma's two bounds
    assert "data:image/jpeg;base64," in page and "unreadable" in page
    assert "toy_luma &lt; 0.05" in page and "exact duplicate of" in page


def test_config_errors_name_file_stage_and_op(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[stage]]\nname = "s1"\n'
                   'ops = [{ op = "toy_size" }, { op = "toy_luma", keep = { lum = [0, 1] } }]\n')
    with pytest.raises(pl.PipelineError, match=r"bad.toml: stage 's1', op 2 \(toy_luma\): .*no statistic 'lum'"):
        pl.load_pipeline(str(bad))
    bad.write_text('[[stage]]\nname = "s1"\nops = [{ op = "nope" }]\n')
    with pytest.raises(pl.PipelineError, match=r"stage 's1', op 1 \(nope\): unknown curation op 'nope'"):
        pl.load_pipeline(str(bad))
    bad.write_text('shards = 3\n[[stage]]\nname = "s1"\nops = []\n')
    with pytest.raises(pl.PipelineError, match="bad.toml: unknown option 'shards'"):
        pl.load_pipeline(str(bad))
    bad.write_text('[[stage]]\nname = "s1"\nops = [{ op = "toy_size", keep = { short_side = 3 } }]\n')
    with pytest.raises(pl.PipelineError, match=r"op 1 \(toy_size\): .*keep.short_side must be \[lo, hi\]"):
        pl.load_pipeline(str(bad))
    with pytest.raises(pl.PipelineError, match="no such file, and no preset"):
        pl.load_pipeline("no_such_preset")


def test_overrides_and_skips(tmp_path):
    p = pl.load_pipeline(_raw(), ["toy_luma.keep.toy_luma=[0.1, 0.9]", "s1.toy_size.keep.short_side=[8, 100]",
                                  "shard_size=7"], ["toy_caption"])
    assert p.shard_size == 7
    assert p.stages[1].ops[0].keep == {"toy_luma": (0.1, 0.9)} and len(p.stages[1].ops) == 1
    assert p.stages[0].ops[0].keep == {"short_side": (8.0, 100.0)}
    assert [len(ph) for ph in p.phases()] == [2, 1]
    assert [s.name for s in pl.load_pipeline(_raw(), skip=["s2"]).stages] == ["s1"]
    with pytest.raises(pl.PipelineError, match=r"--set nsfw.model=x: no op 'nsfw'"):
        pl.load_pipeline(_raw(), ["nsfw.model=x"])
    with pytest.raises(pl.PipelineError, match="--skip s1.toy_luma: no op 's1.toy_luma'"):
        pl.load_pipeline(_raw(), skip=["s1.toy_luma"])


# ------------------------------------------------------------------------------------------------ end to end

MODEL_OPS = ["nsfw", "clip_alignment", "aesthetic", "watermark", "face_mosaic"]   # weights by hub name: not here


def _scene(seed, size=(720, 660)):
    """Photo-like: a gradient, overlapping shapes, mild noise (passes every default rule of the image ops)."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    from PIL import ImageDraw
    im = Image.fromarray((np.stack([0.3 + 0.4 * x, 0.4 + 0.2 * y, 0.6 - 0.3 * x], -1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(25):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(10, 80)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(
            (cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.integers(30, 230, 3)))
    return Image.fromarray(np.clip(np.asarray(im, np.float32) + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8))


def test_report_preset_end_to_end(tmp_path):
    """The shipped preset (model ops and OCR skipped) over 25 synthetic files, some made to fail each stage."""
    import cv2
    from PIL import ImageFilter

    from qwenimage.training.data.dataset import load_samples

    raw = tmp_path / "raw"
    raw.mkdir()
    fail = {}

    def put(name, im, caption="a photo of coloured shapes over a soft gradient", why=None, **save):
        im.save(raw / name, **save) if im is not None else None
        (raw / (os.path.splitext(name)[0] + ".txt")).write_text(caption)
        if why:
            fail[name] = why

    for i in range(14):
        put(f"good{i:02d}.jpg", _scene(i), quality=92)
    (raw / "trunc.jpg").write_bytes((raw / "good00.jpg").read_bytes()[:3000])
    put("trunc.jpg", None, why=("s1", "broken"))
    (raw / "words.jpg").write_bytes(b"not an image at all")
    put("words.jpg", None, why=("s1", "broken: not a readable image"))
    put("small.jpg", _scene(20, (200, 180)), why=("s1", "resolution: short_side"))
    put("near_dup.jpg", _scene(3), quality=80, why=("s7", "dedup: near duplicate of"))   # re-encoded copy
    put("blur.jpg", _scene(21).filter(ImageFilter.GaussianBlur(8)), why=("s2", "clarity"))
    put("dark.jpg", Image.fromarray((np.asarray(_scene(22)) * 0.03).astype(np.uint8)), why=("s2", "clarity"))
    exif = Image.Exif()
    exif[0x0112] = 6
    put("rotated.jpg", _scene(23), exif=exif, why=("s2", "exif_rotation"))
    put("sorry.jpg", _scene(24), caption="Sorry, I cannot provide a caption for this image.",
        why=("s3", "invalid_caption"))
    put("mid.jpg", _scene(25, (600, 480)), why=("s5", "resolution: short_side"))
    qr = np.asarray(_scene(26)).copy()
    qr[60:380, 60:380] = 255
    qr[80:360, 80:360] = cv2.resize(cv2.QRCodeEncoder.create().encode("https://example.com/qwen-image"), (280, 280),
                                    interpolation=cv2.INTER_NEAREST)[..., None]
    put("qr.jpg", Image.fromarray(qr), quality=92, why=("s5", "qr_code"))

    out = tmp_path / "out"
    pipeline = pl.load_pipeline("report", ["best_per_category.rank_by=clarity"], MODEL_OPS + ["ocr_text"])
    totals = engine.curate([raw], str(out), pipeline, workers=1, progress=False)
    dropped = {os.path.basename(d["key"]): d for d in map(json.loads, open(out / "dropped.jsonl"))}
    assert {k: (d["stage"], d["reason"]) for k, d in dropped.items() if k not in fail} == {}
    for name, (stage, why) in fail.items():
        assert dropped[name]["stage"] == stage and dropped[name]["reason"].startswith(why), (name, dropped[name])
        assert " at 0x" not in dropped[name]["reason"]   # no memory address: the same words from every engine
    assert totals["kept"] == 14 and [s["name"] for s in totals["stages"]] == ["s1", "s2", "s3", "s4", "s5", "s6", "s7"]
    samples = load_samples(out / "manifest.jsonl", on_error="error", min_size=256)
    assert len(samples) == 14 and all(s.category.startswith("general") for s in samples)
    row = json.loads(open(out / "manifest.jsonl").readline())
    assert {"clarity", "luma", "phash", "caption_tokens", "blockiness", "has_qr", "category"} <= set(row["stats"])
    page = (out / "report.html").read_text()
    assert "<h3>clarity</h3><svg" in page and "s5 / qr_code" in page


def test_cli_prints_the_funnel_and_names_errors(data, tmp_path, capsys, monkeypatch):
    from qwenimage.cli import main

    toml = tmp_path / "toy.toml"
    toml.write_text('shard_size = 4\n[[stage]]\nname = "s1"\nops = [{ op = "toy_size" }, { op = "toy_luma" }]\n')
    out = tmp_path / "out"
    assert main(["data", "curate", *map(str, data), "--out", str(out), "--pipeline", str(toml), "--workers", "1",
                 "--set", "toy_luma.keep.toy_luma=[0.05, 0.95]", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "toy_luma" in text and "toy_luma < 0.05 1" in text and str(out / "report.html") in text
    assert main(["data", "curate", str(data[0]), "--out", str(tmp_path / "o2"), "--pipeline", str(toml),
                 "--skip", "nsfw"]) == 2
    assert "--skip nsfw: no op 'nsfw'" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["data", "curate", str(tmp_path / "empty"), "--out", str(tmp_path / "o4"),
                 "--pipeline", str(toml)]) == 2
    assert "no images found in" in capsys.readouterr().err
    for bad, why in ((["--shard-size", "-1"], "--shard-size: -1 is not positive"),
                     (["--workers", "0"], "--workers: 0 is not positive")):
        with pytest.raises(SystemExit) as e:
            main(["data", "curate", str(data[0]), "--out", str(tmp_path / "o5"), "--pipeline", str(toml), *bad])
        assert e.value.code == 2 and why in capsys.readouterr().err
    (tmp_path / "afile").write_text("mine")
    assert main(["data", "curate", str(data[0]), "--out", str(tmp_path / "afile"), "--pipeline", str(toml)]) == 2
    assert "afile: exists and is not a folder" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "mine"
    monkeypatch.setitem(sys.modules, "ray", None)   # ray not installed: one line naming the extra
    assert main(["data", "curate", str(data[0]), "--out", str(tmp_path / "o3"), "--pipeline", str(toml),
                 "--ray", "--no-progress"]) == 2
    assert "pip install 'qwenimage[data]'" in capsys.readouterr().err
