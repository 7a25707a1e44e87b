"""The demo model shipped in demo/models/: it draws the colour, shape and background a prompt asks for (checked at
the pixel level by a simple classifier), its graph runs through the node pack, `qwenimage generate` loads its
files, and its build (training/demo.py) gives the same bytes twice."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from qwenimage.training.demo import FILES, demo_paths, digest
from qwenimage.training.data.demo_shapes import BACKGROUNDS, COLORS, SHAPE_COLORS, SHAPES, draw_demo_shape, shape_caption

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = demo_paths()
SIZE, STEPS, CFG = 64, 20, 1.0  # as the demo workflow: trained without dropped captions, CFG only hurts
# Measured on the shipped build: background 15/15, colour 15/15, shape 9/15 (chance: 1/5, 1/6, 1/3)
BACKGROUND_MIN, COLOUR_MIN, SHAPE_MIN = 0.9, 0.9, 0.55
# every shape colour, shape and background at least twice, in fixed pairs
PROMPTS = [("red", "circle", "blue"), ("green", "square", "white"), ("blue", "triangle", "gray"),
           ("yellow", "circle", "black"), ("purple", "square", "green"), ("orange", "triangle", "white"),
           ("red", "square", "gray"), ("green", "triangle", "black"), ("blue", "circle", "white"),
           ("yellow", "square", "blue"), ("purple", "triangle", "gray"), ("orange", "circle", "green"),
           ("red", "triangle", "white"), ("blue", "square", "black"), ("green", "circle", "gray")]


def _nearest(rgb, names) -> str:
    return min(names, key=lambda n: float(np.sum((np.asarray(COLORS[n], float) - rgb) ** 2)))


def classify(im: Image.Image) -> tuple[str, str, str]:
    """(colour, shape, background): the border's median is the background, the centre's median the object
    colour; the shape is told by how much of its bounding box the object fills (square 1, circle pi/4,
    triangle 1/2)."""
    a = np.asarray(im.convert("RGB"), dtype=float)
    h, w, _ = a.shape
    border = np.concatenate([a[:3].reshape(-1, 3), a[-3:].reshape(-1, 3), a[:, :3].reshape(-1, 3),
                             a[:, -3:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    centre = a[h * 3 // 8: h * 5 // 8, w * 3 // 8: w * 5 // 8].reshape(-1, 3)
    fg_rgb = np.median(centre, axis=0)
    closer_to_fg = np.sum((a - fg_rgb) ** 2, -1) < np.sum((a - bg_rgb) ** 2, -1)
    ys, xs = np.nonzero(closer_to_fg)
    fill = closer_to_fg.sum() / max(1, (np.ptp(ys) + 1) * (np.ptp(xs) + 1)) if len(ys) else 0.0
    shape = "square" if fill > 0.89 else "circle" if fill > 0.64 else "triangle"
    return _nearest(fg_rgb, SHAPE_COLORS), shape, _nearest(bg_rgb, BACKGROUNDS)


def test_classifier_reads_the_training_pictures():
    """The classifier itself is right on drawn pictures, so its verdict on generated ones means something."""
    import random

    rng = random.Random(1)
    for color, shape, bg in PROMPTS:
        assert classify(draw_demo_shape(shape, color, bg, SIZE, rng)) == (color, shape, bg)


def test_shipped_files_are_there_and_small():
    sizes = {k: os.path.getsize(p) for k, p in PATHS.items()}
    assert sum(sizes.values()) <= 20e6, sizes
    for p in PATHS.values():
        assert os.path.basename(p) in FILES.values()


@pytest.fixture(scope="module")
def pipe():
    from qwenimage.qwenimage_core import load_pipeline

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_pipeline([PATHS["diffusion_models"], PATHS["text_encoders"], PATHS["vae"]], dtype=torch.float32)


def test_demo_model_follows_prompts(pipe):
    prompts = [shape_caption(s, c, b) for c, s, b in PROMPTS]
    images = [pipe.generate(p, width=SIZE, height=SIZE, steps=STEPS, cfg=CFG, seed=i)[0]
              for i, p in enumerate(prompts)]
    got = [classify(im) for im in images]
    right = {k: sum(g[i] == w[i] for g, w in zip(got, [(c, s, b) for c, s, b in PROMPTS])) / len(PROMPTS)
             for i, k in enumerate(("colour", "shape", "background"))}
    detail = "; ".join(f"{p} -> {g}" for p, g in zip(prompts, got))
    assert right["background"] >= BACKGROUND_MIN, (right, detail)
    assert right["colour"] >= COLOUR_MIN and right["shape"] >= SHAPE_MIN, (right, detail)


def test_demo_workflow_runs_through_the_node_pack(tmp_path):
    from _graph import run_prompt

    from qwenimage.nodes import NODE_CLASS_MAPPINGS, host
    from qwenimage.nodes.builtins import BUILTIN_NODE_CLASS_MAPPINGS

    with open(os.path.join(REPO, "workflows", "api", "demo.json"), encoding="utf-8") as fh:
        prompt = json.load(fh)
    old = (host.models_dir(), host.input_dir(), host.output_dir(), host.temp_dir())
    host.set_models_dir(tmp_path / "models")  # an empty models folder: the shipped demo root is found after it
    host.set_dirs(input=tmp_path / "in", output=tmp_path / "out", temp=tmp_path / "tmp")
    try:
        for kind in ("diffusion_models", "text_encoders", "vae"):
            assert FILES[kind] in host.list_models(kind)
        previews = []
        host.set_progress_hook(lambda value, total, preview: previews.append(preview))
        _, ui = run_prompt(prompt, {**BUILTIN_NODE_CLASS_MAPPINGS, **NODE_CLASS_MAPPINGS})
        saved = [im for u in ui.values() if u for im in u["images"]]
        im = Image.open(tmp_path / "out" / saved[0]["subfolder"] / saved[0]["filename"])
    finally:
        host.set_progress_hook(None)
        host.set_models_dir(old[0])
        host.set_dirs(*old[1:])
        host.free_memory()
    assert im.size == (SIZE, SIZE)
    text = prompt[next(k for k, v in prompt.items() if v["class_type"] == "QwenImageTextEncode")]["inputs"]["text"]
    assert classify(im)[2] == text.split()[-2], (text, classify(im))  # "... on a blue background"
    # the very image `qwenimage generate` makes (the demo VAE's own latent statistics on both paths)
    from qwenimage.cli import main

    s = prompt[next(k for k, v in prompt.items() if v["class_type"] == "QwenImageSampler")]["inputs"]
    assert main(["generate", PATHS["diffusion_models"], PATHS["text_encoders"], PATHS["vae"], "-p", text,
                 "-W", str(SIZE), "-H", str(SIZE), "--steps", str(s["steps"]), "--cfg", str(s["cfg"]),
                 "--seed", str(s["seed"]), "-o", str(tmp_path / "cli.png")]) in (0, None)
    got = np.asarray(im.convert("RGB"), dtype=int)
    want = np.asarray(Image.open(tmp_path / "cli.png").convert("RGB"), dtype=int)
    assert np.abs(got - want).max() <= 1, np.abs(got - want).max()
    # the sampler's live preview looks like the image being made: its last frame, at the latent grid, is the
    # picture's colours (latent2rgb fitted to the demo VAE's own latent space, which the graph wires in)
    last = np.asarray(previews[-1].convert("RGB").resize((SIZE // 8, SIZE // 8), Image.BOX), dtype=float)
    small = np.asarray(im.convert("RGB").resize((SIZE // 8, SIZE // 8), Image.BOX), dtype=float)
    assert len(previews) == s["steps"] and np.abs(last - small).mean() < 20, np.abs(last - small).mean()


def test_qwenimage_generate_loads_the_shipped_files(tmp_path):
    from qwenimage.cli import main

    out = tmp_path / "demo.png"
    rc = main(["generate", PATHS["diffusion_models"], PATHS["text_encoders"], PATHS["vae"], "-p",
               "a yellow square on a blue background", "-W", str(SIZE), "-H", str(SIZE), "--steps", str(STEPS),
               "--cfg", str(CFG), "--seed", "3", "-o", str(out)])
    assert rc in (0, None)
    im = Image.open(out)
    assert im.size == (SIZE, SIZE)
    assert classify(im)[2] == "blue"


def test_cut_down_build_is_deterministic(tmp_path):
    """Same seed, same machine: the same bytes. The documented command, a few steps of each stage, run twice, each
    in a fresh process (as a user runs it)."""
    import subprocess
    import sys

    small = ["build.images=12", "vae.train.steps=2", "vae.vae.holdout=2", "vae.data.batch_size=4",
             "mmdit.train.steps=3", "mmdit.data.batch_size=4", "mmdit.schedule.warmup=1", "vae.schedule.warmup=1"]
    digests = []
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-m", "qwenimage.training.demo", "--out", str(tmp_path / name), "--set",
                        *small], check=True, capture_output=True, timeout=600)
        digests.append(digest(demo_paths(tmp_path / name)))
    assert digests[0] == digests[1]
    assert set(digests[0]) == {"diffusion_models", "text_encoders", "vae"}


def test_demo_is_the_first_template():
    from qwenimage.nodes.server import example_workflows

    assert example_workflows()[0] == "demo"
