"""Time per image of the model-based curation ops on one CPU core, with random-weight models of their defaults'
architectures (speed does not depend on the weights; the real weights are not on this machine):

    nsfw / watermark   ViT-B/16 image classifier at 224 px (Falconsai/nsfw_image_detection, amrul-hzz/...)
    clip_score         Chinese-CLIP ViT-B/16 + RoBERTa-base text tower (OFA-Sys/chinese-clip-vit-base-patch16)
    siglip_score       SigLIP B/16 at 224 px, 64 text tokens (google/siglip2-base-patch16-224; vocabulary cut to
                       32k: an embedding lookup costs the same at 256k)
    aesthetic          CLIP ViT-L/14 vision tower + the LAION MLP (openai/clip-vit-large-patch14)
    face measures      mosaic + blur on one 256 px face box (the YuNet detector's ONNX is not here: not timed)

    python bench/bench_curation_models.py --n 8 --batch 4 --ops nsfw clip_score faces
    python bench/bench_curation_models.py --n 8 --batch 4 --ops siglip_score
    python bench/bench_curation_models.py --n 4 --batch 2 --ops aesthetic

Images are 1024x768 photos-like noise decoded beforehand (decoding and the 512 px analysis copy are the
cheap-stats benchmark's); model building is not timed. Prints ms/image and images/s for each op."""
import argparse
import io
import os
import time

import numpy as np
import torch
from PIL import Image

from _common import command, machine

from qwenimage.training.data.curation import ops  # noqa: F401
from qwenimage.training.data.curation.op import Item, Record, build_op
from qwenimage.training.data.curation.ops.faces import blur_effect, mosaic_score

BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


def images(n: int) -> list[Item]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        arr = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
        im = Image.fromarray(arr).resize((1024, 768), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        it = Item(Record(f"k{i}", f"k{i}.jpg", caption="一只猫坐在窗台上 a cat sitting on a window sill"),
                  data=buf.getvalue())
        it.small  # noqa: B018  decoded and scaled before timing
        out.append(it)
    return out


def word_tokenizer(words: int = 1000):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>", *(f"w{i}" for i in range(words))])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def build(name: str, tmp: str):
    """The op, with its model built here in memory (what `load()` would return for the real checkpoint)."""
    import transformers as tf
    from transformers.initialization import no_init_weights

    with no_init_weights():   # skip the slow truncated-normal init, then fill with small uniform values
        op = _build(tf, name, tmp)
    for m in [op._loaded] if not isinstance(op._loaded, dict) else op._loaded.values():
        for part in m:
            if isinstance(part, torch.nn.Module):
                with torch.no_grad():
                    for p in part.parameters():
                        p.uniform_(-0.02, 0.02)
    return op


def _build(tf, name: str, tmp: str):
    vision = dict(BASE, image_size=224, patch_size=16)
    if name in ("nsfw", "watermark"):
        model = tf.ViTForImageClassification(tf.ViTConfig(**vision, num_labels=2)).eval()
        op = build_op({"op": name, "batch_size": 64})
        op._loaded = (tf.ViTImageProcessorPil(), model, 1, False)
    elif name in ("clip_score", "siglip_score"):
        if name == "clip_score":
            cfg = tf.ChineseCLIPConfig(text_config=dict(BASE, vocab_size=21128), vision_config=vision,
                                       projection_dim=512)
            model = tf.ChineseCLIPModel(cfg).eval()
            vocab = os.path.join(tmp, "vocab.txt")
            with open(vocab, "w") as fh:
                fh.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"一只猫坐在窗台上", "a", "cat"]))
            parts = (model, tf.BertTokenizer(vocab), tf.ChineseCLIPImageProcessorPil())
        else:
            cfg = tf.SiglipConfig(text_config=dict(BASE, vocab_size=32000, max_position_embeddings=64),
                                  vision_config=vision)
            parts = (tf.SiglipModel(cfg).eval(), word_tokenizer(), tf.SiglipImageProcessorPil())
        op = build_op({"op": "clip_alignment", "models": {name: "random"}, "batch_size": 64})
        op._loaded = {name: parts}
    elif name == "aesthetic":
        cfg = tf.CLIPConfig(text_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                             intermediate_size=3072),
                            vision_config=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                               intermediate_size=4096, image_size=224, patch_size=14),
                            projection_dim=768)
        widths = [768, 1024, 128, 64, 16, 1]
        mlp = torch.nn.Sequential(*(torch.nn.Linear(a, b) for a, b in zip(widths, widths[1:]))).eval()
        op = build_op({"op": "aesthetic", "batch_size": 64})
        op._loaded = (tf.CLIPModel(cfg).eval(), tf.CLIPImageProcessorPil(), mlp)
    else:
        raise SystemExit(f"unknown op {name}")
    return op


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ops", nargs="+", default=["nsfw", "clip_score", "siglip_score", "aesthetic", "faces"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(command(), "|", machine(), f"| load {os.getloadavg()[0]:.1f}")
    items = images(a.n)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in a.ops:
            if name == "faces":
                gray = np.asarray(items[0].pil.convert("L"), dtype=np.float32)[100:356, 300:556]
                t0 = time.perf_counter()
                for _ in range(a.n):
                    mosaic_score(gray), blur_effect(gray)
                dt = (time.perf_counter() - t0) / a.n
                print(f"face measures (256 px box): {dt * 1e3:.1f} ms/face")
                continue
            t0 = time.perf_counter()
            op = build(name, tmp)
            built = time.perf_counter() - t0
            op.batch_size = a.batch
            op.compute_batch(items[:2])                       # warm-up
            t0 = time.perf_counter()
            for i in range(0, a.n, a.batch):
                op.compute_batch(items[i:i + a.batch])
            dt = (time.perf_counter() - t0) / a.n
            print(f"{name}: {dt * 1e3:.0f} ms/image = {1 / dt:.2f} images/s (batch {a.batch}; built in {built:.1f} s)",
                  flush=True)
            del op


if __name__ == "__main__":
    main()
