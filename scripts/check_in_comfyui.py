"""The client half of scripts/check_in_comfyui.sh: talks to a running ComfyUI (with this pack in its custom_nodes
and the demo files in its models folders) over ComfyUI's own HTTP and websocket API, as its API examples do.

Checks: every node of the pack is registered; our loaders list the demo files from ComfyUI's folders (the same
names ComfyUI's own loaders list); workflows/api/demo.json runs, the image comes back through /view and shows the
background its prompt asks for (the classifier of tests/test_demo.py); with ComfyUI's default --preview-method
none no preview frame is sent; ComfyUI's own loaders given our demo files refuse them with an error (their
architecture sizes are fixed) and the server carries on. Prints what it found; exits 1 on the first failure.

    python scripts/check_in_comfyui.py http://127.0.0.1:8188
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
import uuid

import aiohttp
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
DEMO_LOADERS = {  # our loader, its file input, ComfyUI's own loader for the same folder, demo file's folder
    "QwenImageModelLoader": ("unet_name", "UNETLoader", "diffusion_models"),
    "QwenImageTextEncoderLoader": ("clip_name", "CLIPLoader", "text_encoders"),
    "QwenImageVAELoader": ("vae_name", "VAELoader", "vae"),
}
# ComfyUI's own loaders on our files, each alone in a graph with its save node (an output node) after it
NATIVE = {
    "UNETLoader": ({"unet_name": "diffusion_models", "weight_dtype": "default"}, "ModelSave", "model"),
    "CLIPLoader": ({"clip_name": "text_encoders", "type": "qwen_image"}, "CLIPSave", "clip"),
    "VAELoader": ({"vae_name": "vae"}, "VAESave", "vae"),
}


class CheckFailed(Exception):
    pass


def check(ok: bool, what: str) -> None:
    print(("ok    " if ok else "FAIL  ") + what, flush=True)
    if not ok:
        raise CheckFailed(what)


async def get_json(s: aiohttp.ClientSession, url: str):
    async with s.get(url) as r:
        r.raise_for_status()
        return await r.json()


async def run_prompt(s, base: str, prompt: dict, client_id: str, timeout: float = 900.0) -> tuple[dict, int]:
    """POST /prompt, follow the websocket until the run ends; (its /history entry, binary frames seen)."""
    binary = 0
    async with s.ws_connect(f"{base.replace('http', 'ws', 1)}/ws?clientId={client_id}") as ws:
        async with s.post(f"{base}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
            body = await r.json()
            if r.status != 200:
                raise CheckFailed(f"/prompt refused the graph: {json.dumps(body)[:2000]}")
        pid, end = body["prompt_id"], time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                msg = await ws.receive(timeout=5)
            except asyncio.TimeoutError:
                msg = None
            if msg is not None and msg.type == aiohttp.WSMsgType.BINARY:
                binary += 1
            history = await get_json(s, f"{base}/history/{pid}")
            if pid in history:
                return history[pid], binary
            if msg is not None and msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                raise CheckFailed("the websocket closed during the run")
    raise CheckFailed(f"no result for {pid} within {timeout:.0f} s")


def errors(entry: dict) -> list[dict]:
    return [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]


async def main(base: str) -> None:
    from test_demo import classify

    from qwenimage.nodes import NODE_CLASS_MAPPINGS
    from qwenimage.training.demo import FILES

    async with aiohttp.ClientSession() as s:
        info = await get_json(s, f"{base}/object_info")
        missing = sorted(set(NODE_CLASS_MAPPINGS) - set(info))
        check(not missing, f"ComfyUI registered all {len(NODE_CLASS_MAPPINGS)} nodes of the pack"
                           + (f" (missing: {', '.join(missing)})" if missing else ""))
        for ours, (field, native, folder) in DEMO_LOADERS.items():
            listed = info[ours]["input"]["required"][field][0]
            theirs = [n for n in info[native]["input"]["required"][field][0] if n.endswith((".safetensors", ".sft"))]
            check(FILES[folder] in listed and listed == theirs,
                  f"{ours} lists {FILES[folder]} from ComfyUI's {folder} folder, as {native} does ({listed})")

        with open(os.path.join(REPO, "workflows", "api", "demo.json"), encoding="utf-8") as fh:
            demo = json.load(fh)
        t0 = time.monotonic()
        entry, frames = await run_prompt(s, base, demo, uuid.uuid4().hex)
        check(entry["status"]["status_str"] == "success" and not errors(entry),
              f"the demo workflow ran in {time.monotonic() - t0:.1f} s" + (f": {errors(entry)}" if errors(entry) else ""))
        check(frames == 0, f"no live preview frame under ComfyUI's default --preview-method none ({frames} sent)")
        saved = [im for out in entry["outputs"].values() for im in out.get("images", [])]
        check(len(saved) == 1, f"one image saved: {saved}")
        async with s.get(f"{base}/view", params={k: saved[0][k] for k in ("filename", "subfolder", "type")}) as r:
            image = Image.open(io.BytesIO(await r.read()))
        text = next(v["inputs"]["text"] for v in demo.values() if v["class_type"] == "QwenImageTextEncode")
        got = classify(image)
        check(image.size == (64, 64) and got[2] == text.split()[-2],
              f"/view gives a {image.size[0]}x{image.size[1]} image of colour, shape, background {got} "
              f"for {text!r}")

        for native, (inputs, saver, socket) in NATIVE.items():
            graph = {"1": {"class_type": native, "inputs": {k: FILES[v] if v in FILES else v
                                                             for k, v in inputs.items()}},
                     "2": {"class_type": saver, "inputs": {socket: ["1", 0], "filename_prefix": "check/refused"}}}
            entry, _ = await run_prompt(s, base, graph, uuid.uuid4().hex, timeout=300)
            errs = errors(entry)
            said = errs[0]["exception_message"].strip().splitlines()[:2] if errs else []
            check(entry["status"]["status_str"] == "error" and errs and errs[0]["node_type"] == native,
                  f"ComfyUI's {native} refuses the demo file with an error: {' '.join(said)[:160]}")
        stats = await get_json(s, f"{base}/system_stats")
        check("system" in stats, "the server carries on after the refusals")
        templates = (await get_json(s, f"{base}/api/workflow_templates")).items()
        ours = [names for pack, names in templates if "demo" in names]
        check(bool(ours), "ComfyUI's template browser lists the pack's demo workflow")
        check(all(not n.startswith("api") for n in ours[0]),  # ComfyUI lists every workflows/*.json
              "only UI-format graphs are listed as templates (the API-format ones live in workflows/api/)")
        pack = next(p for p, names in templates if "demo" in names)
        served = {}
        for name in ours[0]:  # the card's thumbnail, <name>.jpg beside <name>.json, as the frontend asks for it
            async with s.get(f"{base}/api/workflow_templates/{pack}/{name}.jpg") as r:
                served[name] = r.status
        check(all(v == 200 for v in served.values()), f"ComfyUI serves every template's thumbnail: {served}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    try:
        asyncio.run(main(sys.argv[1].rstrip("/")))
    except CheckFailed:
        sys.exit(1)
