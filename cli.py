"""`qwenimage` command line: one entry point over the core (and, as they land, the node server and the trainer)."""
from __future__ import annotations

import os
import sys
import tempfile
import time


# The argument types and the one-line usage errors sit a floor down, shared with the faces' own command lines
# (training/cli.py, training/eval/cli.py), which import them from there rather than from this module.
from .qwenimage_core.cli_args import (Parser, finite_float, parse_device, parse_dtype, positive_int,  # noqa: F401
                                      run, unit_float)


def check_output(path: str) -> None:
    """Refuse an output path we could not write, before minutes of loading and sampling: the folder is created
    and a temporary file written and removed there."""
    from .qwenimage_core.images import create_temp

    if os.path.isdir(path):
        raise ValueError(f"output {path}: is a folder; give a file name such as {os.path.join(path, 'image.png')}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = create_temp(folder, ".png")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(f"output {path}: cannot write there ({e.strerror or e})") from None


def cmd_inspect(a) -> int:
    """Say what a checkpoint is, and load it to prove it."""
    from .qwenimage_core import load_transformer
    from .qwenimage_core.checkpoint import check_transformer_config, transformer_sources
    from .qwenimage_core.checkpoint21 import transformer_family

    config, sources = transformer_sources(a.path)
    check_transformer_config(config, sources)
    files = sorted({f.path for f, _ in sources.values()})
    family = transformer_family(sources) or "unknown model"
    print(f"transformer: {family}, {len(sources)} tensors in {len(files)} file(s)")
    for k, v in config.to_dict().items():
        print(f"  {k}: {v}")
    if a.load:
        t0 = time.perf_counter()
        dtype, weight_dtype = a.dtype or (None, None)
        model = load_transformer(a.path, dtype=dtype, weight_dtype=weight_dtype)
        n = sum(p.numel() for p in model.parameters())
        print(f"loaded {n:,} parameters as {model.dtype} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_selfcheck(a) -> int:
    """Build a tiny model, write it in both layouts, load each back and run the velocity prediction."""
    import torch

    from .qwenimage_core import QwenImageTransformer, load_transformer, preset, save_comfyui_transformer, save_transformer

    torch.manual_seed(0)
    model = QwenImageTransformer(preset(a.preset)).eval()
    cfg = model.config
    x = torch.randn(1, 64, cfg.in_channels)
    txt = torch.randn(1, 12, cfg.joint_attention_dim)
    kw = dict(hidden_states=x, encoder_hidden_states=txt, encoder_hidden_states_mask=torch.ones(1, 12),
              timestep=torch.tensor([0.5]), img_shapes=[(1, 8, 8)])
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        want = model(**kw)
        save_transformer(model, f"{tmp}/model/transformer")
        save_comfyui_transformer(model, f"{tmp}/single.safetensors", prefix="model.diffusion_model.")
        for path in (f"{tmp}/model", f"{tmp}/single.safetensors"):
            got = load_transformer(path)(**kw)
            # same weights, but memory-mapped tensors may be aligned differently, which changes GEMM summation order
            ok = torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
            print(f"{'ok  ' if ok else 'FAIL'} {path.replace(tmp, '<tmp>')}: velocity {tuple(got.shape)}")
            if not ok:
                return 1
    print(f"self-check passed ({a.preset} preset, {sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


def _size(a):
    from .qwenimage_core.images import ASPECT_PRESETS

    if a.aspect:
        if a.width or a.height:
            raise ValueError("give --aspect or --width/--height, not both")
        return ASPECT_PRESETS[a.aspect]
    return a.width, a.height


def cmd_generate(a) -> int:
    """Load a model, generate (or edit) and save PNGs with the settings in their text chunk."""
    import json

    import torch
    from tqdm import tqdm

    from .qwenimage_core.images import check_size, load_image, save_png
    from .qwenimage_core.pipeline import load_pipeline

    width, height = _size(a)
    if width and height:
        check_size(width, height)
    check_output(a.output)
    refs = [load_image(p, "reference image") for p in a.reference or []]
    image = load_image(a.image, "image") if a.image else None
    mask = load_image(a.mask, "mask") if a.mask else None
    model = a.model[0] if len(a.model) == 1 else a.model
    if len(a.model) not in (1, 3):
        raise ValueError("give a diffusers model folder, or three files: diffusion model, text encoder, VAE")
    dtype, weight_dtype = a.dtype or (None, None)
    pipe = load_pipeline(model, device=a.device, dtype=dtype, weight_dtype=weight_dtype,
                         edit_template=a.edit_template)
    bar = tqdm(total=None, desc="sampling", unit="step", disable=a.quiet)

    def progress(i, total, latents, x0):
        bar.total = total
        bar.update(1)

    images = pipe.generate(a.prompt, negative_prompt=a.negative_prompt, width=width, height=height, steps=a.steps,
                           cfg=a.cfg, seed=a.seed, references=refs or None, image=image, strength=a.strength,
                           mask=mask, num_images=a.num_images, shift=a.shift, callback=progress)
    bar.close()
    settings = {"prompt": a.prompt, "negative_prompt": a.negative_prompt, "width": images[0].width,
                "height": images[0].height, "steps": a.steps, "cfg": a.cfg, "shift": a.shift, "seed": a.seed,
                "model": [os.path.basename(os.path.normpath(m)) for m in a.model], "references": a.reference,
                "image": a.image, "strength": a.strength if a.image else None, "mask": a.mask,
                "edit_template": pipe.edit_template if refs else None}
    stem, ext = os.path.splitext(a.output)
    for i, im in enumerate(images):
        path = a.output if len(images) == 1 else f"{stem}_{i:02d}{ext or '.png'}"
        save_png(im, path, {"qwenimage": json.dumps({**settings, "index": i}), "parameters": _a1111(settings)})
        print(path)
    return 0


def _a1111(s) -> str:
    """The settings as the 'parameters' text most image viewers and civitai read."""
    neg = f"\nNegative prompt: {s['negative_prompt']}" if s["negative_prompt"] else ""
    shift = f", Shift: {s['shift']}" if s["shift"] is not None else ""
    return (f"{s['prompt']}{neg}\nSteps: {s['steps']}, Sampler: Euler, CFG scale: {s['cfg']}, Seed: {s['seed']}, "
            f"Size: {s['width']}x{s['height']}{shift}, Model: {'+'.join(s['model'])}")


def cmd_download(a) -> int:
    """Into models/diffusers/<Name>/ by default, where `qwenimage serve` and ComfyUI's diffusers loader look."""
    from pathlib import Path

    from .nodes.host import models_dir
    from .qwenimage_core.hub import download, repo_id

    if a.cache and a.dir:
        raise ValueError("give --dir or --cache, not both")
    looked_in = (models_dir() / "diffusers").resolve()

    def warn_if_elsewhere(path):
        if looked_in not in Path(path).resolve().parents:
            print(f"warning: {path} is outside {looked_in}, where qwenimage serve lists model folders; use it by "
                  "path, move it there, or serve with --models-dir", file=sys.stderr)

    dest = None if a.cache else Path(a.dir or looked_in / repo_id(a.name).split("/")[-1])
    if dest is not None:  # said before a download of tens of gigabytes, not after
        warn_if_elsewhere(dest)
    where = download(a.name, dest, a.revision)
    if dest is None:
        warn_if_elsewhere(where)
    print(where)
    return 0


def main(argv=None) -> int:
    ap = Parser(prog="qwenimage", description="Qwen-Image: text-to-image and editing")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="describe (and optionally load) a transformer checkpoint")
    p.add_argument("path", help="diffusers model folder, transformer folder, or ComfyUI .safetensors file")
    p.add_argument("--load", action="store_true", help="also load the weights")
    p.add_argument("--dtype", default=None, type=parse_dtype,
                   help="float32/fp32, bfloat16/bf16, float16/fp16, fp8 (default: as stored)")
    p.set_defaults(fn=cmd_inspect)
    from .qwenimage_core.config import PRESETS

    p = sub.add_parser("selfcheck", help="round-trip a small model through both checkpoint layouts")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.set_defaults(fn=cmd_selfcheck)

    from .qwenimage_core.images import ASPECT_PRESETS
    from .qwenimage_core.hub import MODELS

    p = sub.add_parser("generate", help="text-to-image, image-to-image, inpainting and edits to PNG files")
    p.add_argument("model", nargs="+", help="a diffusers model folder, or three ComfyUI files: diffusion model, "
                                            "text encoder, VAE (in that order)")
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("-n", "--negative-prompt", default=None, help="used when --cfg > 1 (default ' ')")
    p.add_argument("-W", "--width", type=positive_int, default=None)
    p.add_argument("-H", "--height", type=positive_int, default=None)
    p.add_argument("--aspect", choices=sorted(ASPECT_PRESETS), help="an official size preset, e.g. 16:9 = 1664x928")
    p.add_argument("--steps", type=positive_int, default=50)
    p.add_argument("--cfg", type=finite_float, default=4.0, help="true CFG scale; 1 turns guidance off")
    p.add_argument("--shift", type=finite_float, default=None,
                   help="fixed schedule shift as in ComfyUI (e.g. 3.1); default: the official dynamic schedule")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-r", "--reference", action="append", help="reference image for an edit (repeat for up to 3)")
    p.add_argument("-i", "--image", help="input image for image-to-image or inpainting")
    p.add_argument("--strength", type=unit_float, default=0.8, help="image-to-image strength (1 = ignore the image)")
    p.add_argument("-m", "--mask", help="inpainting mask, white = repaint (the --image's size)")
    p.add_argument("--num-images", type=positive_int, default=1)
    p.add_argument("--edit-template", choices=["edit", "edit_plus"], default=None,
                   help="which edit model (default: from model_index.json)")
    p.add_argument("--device", default=None, type=parse_device, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", default=None, type=parse_dtype,
                   help="bfloat16/bf16, float16/fp16, float32/fp32, fp8 (fp8 weights, bf16 compute; default: "
                        "bfloat16 on GPU)")
    p.add_argument("-o", "--output", default="qwenimage.png")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("download", help="fetch an official model folder from the Hugging Face hub")
    p.add_argument("name", help=f"one of {', '.join(MODELS)}, or a hub id")
    p.add_argument("--dir", default=None, help="destination folder (default: models/diffusers/<Name>, where "
                                               "`qwenimage serve` looks; models/ is $QWENIMAGE_MODELS_DIR if set)")
    p.add_argument("--cache", action="store_true", help="download into the Hugging Face hub cache instead")
    p.add_argument("--revision", default=None)
    p.set_defaults(fn=cmd_download)

    # The two faces add their own commands below: serve (nodes/server/run.py); train, cache, data, eval
    # (training/cli.py). The server's module loads torch and aiohttp, so its options are added only when the
    # command line asks for serve; otherwise a placeholder lists it (`qwenimage --help` stays light).
    # --- faces ---
    if _command(argv) == "serve":
        from .nodes.server import register_cli as _serve_cli; _serve_cli(sub)
    else:
        sub.add_parser("serve", help=SERVE_HELP, add_help=False)
    from .training.cli import register_cli as _train_cli, stops; _train_cli(sub)
    return run(ap, argv, stops=stops)


SERVE_HELP = "the graph editor: serve the ComfyUI frontend over this node pack"  # as nodes/server/run.py says


def _command(argv) -> str | None:
    """The subcommand a command line names: its first word that is not an option."""
    return next((w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")), None)

if __name__ == "__main__":
    sys.exit(main())
