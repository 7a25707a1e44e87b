"""Write workflows/*.json: each graph once, here, in both formats ComfyUI uses — the UI format the frontend
loads (nodes, links, widget values, positions, a note saying what to download where) and the API format
`/prompt` takes. Run `python scripts/make_workflows.py` after changing a graph or a node's inputs; the tests
check that the two files of each workflow describe the same graph and that they match the nodes' contracts."""
from __future__ import annotations

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from qwenimage.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from qwenimage.nodes.builtins import BUILTIN_NODE_CLASS_MAPPINGS, BUILTIN_NODE_DISPLAY_NAME_MAPPINGS

CLASSES = {**BUILTIN_NODE_CLASS_MAPPINGS, **NODE_CLASS_MAPPINGS}
DISPLAY = {**BUILTIN_NODE_DISPLAY_NAME_MAPPINGS, **NODE_DISPLAY_NAME_MAPPINGS}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
MODEL_FILE = "qwen_image_fp8_e4m3fn.safetensors"
EDIT_FILE = "qwen_image_edit_2509_fp8_e4m3fn.safetensors"
TE_FILE = "qwen_2.5_vl_7b_fp8_scaled.safetensors"
VAE_FILE = "qwen_image_vae.safetensors"
NEGATIVE = " "
# Layout: four columns, the note above the first two, the output top right (clear of the frontend's minimap at
# the bottom right). A position is a node's body; its title bar (TITLE px) sits above it, and GAP keeps title
# bars off the node above. At the saved view a 1366 x 768 window shows the whole graph with its text legible.
TITLE, GAP = 30, 36
NOTE_W, NOTE_H = 700, 150
COL = (0, 340, 740, 1080)  # loaders and images; prompts and latents; sampler and decode; the output
ROW0 = NOTE_H + TITLE + GAP  # first row under the note
PROMPT_H, NEGATIVE_H = 160, 90  # the prompt's and the negative prompt's text boxes
VIEW_SCALE, VIEW_MARGIN = 0.75, (80, 110)  # screen px clear of ComfyUI's sidebar, menu and floating toolbar

DOWNLOADS = f"""Put the model files in ComfyUI's models folder (or the folder `qwenimage serve --models-dir` names):
- diffusion_models/{MODEL_FILE}  (Comfy-Org/Qwen-Image_ComfyUI, split_files/diffusion_models)
- text_encoders/{TE_FILE}  (same repository, split_files/text_encoders)
- vae/{VAE_FILE}  (same repository, split_files/vae)"""
EDIT_DOWNLOADS = DOWNLOADS.replace(f"diffusion_models/{MODEL_FILE}  (Comfy-Org/Qwen-Image_ComfyUI",
                                   f"diffusion_models/{EDIT_FILE}  (Comfy-Org/Qwen-Image-Edit_ComfyUI")


def widget_names(cls) -> list[str]:
    """Widget inputs in the order the frontend stores their values (required, then optional)."""
    spec = cls.INPUT_TYPES()
    names = []
    for section in ("required", "optional"):
        for name, (typ, *opts) in spec.get(section, {}).items():
            if isinstance(typ, list) or typ in WIDGET_TYPES or typ == "COMBO":
                names.append(name)
    return names


def socket_inputs(cls) -> dict[str, tuple[str, bool]]:
    spec = cls.INPUT_TYPES()
    out = {}
    for section in ("required", "optional"):
        for name, (typ, *opts) in spec.get(section, {}).items():
            if isinstance(typ, str) and typ not in WIDGET_TYPES and typ != "COMBO":
                out[name] = (typ, section == "required")
    return out


class Graph:
    def __init__(self, title: str):
        self.title, self.nodes, self.links = title, [], []

    def add(self, type_: str, pos, size=(320, 130), title=None, **inputs):
        node = {"id": len(self.nodes) + 1, "type": type_, "pos": list(pos), "size": list(size), "inputs": inputs,
                "title": title}
        self.nodes.append(node)
        return node

    def note(self, text, size=(NOTE_W, NOTE_H)):
        """The instructions, top left where ComfyUI's default view shows them, above the loaders."""
        return self.add("Note", (0, 0), size, text=text)

    # -- UI format -----------------------------------------------------------------------------------------
    def ui(self) -> dict:
        links, out_links = [], {}
        for n in self.nodes:
            for name, v in n["inputs"].items():
                if isinstance(v, tuple):
                    src, slot = v
                    lid = len(links) + 1
                    typ = CLASSES[src["type"]].RETURN_TYPES[slot]
                    links.append([lid, src["id"], slot, n["id"], name, typ])
                    out_links.setdefault((src["id"], slot), []).append(lid)
        order = self._order()
        nodes = []
        for n in self.nodes:
            if n["type"] == "Note":
                nodes.append({"id": n["id"], "type": "Note", "pos": n["pos"], "size": n["size"], "flags": {},
                              "order": order[n["id"]], "mode": 0, "inputs": [], "outputs": [],
                              "properties": {"text": ""}, "widgets_values": [n["inputs"]["text"]],
                              "color": "#432", "bgcolor": "#653"})
                continue
            cls = CLASSES[n["type"]]
            inputs = []
            for name, (typ, required) in socket_inputs(cls).items():
                v = n["inputs"].get(name)
                if required or v is not None:
                    link = next((l[0] for l in links if l[3] == n["id"] and l[4] == name), None)
                    inputs.append({"name": name, "type": typ, "link": link})
            outputs = [{"name": (getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES)[i], "type": t,
                        "links": out_links.get((n["id"], i), []), "slot_index": i}
                       for i, t in enumerate(cls.RETURN_TYPES)]
            values = []
            spec = {**cls.INPUT_TYPES().get("required", {}), **cls.INPUT_TYPES().get("optional", {})}
            for name in widget_names(cls):
                values.append(n["inputs"][name])
                opts = spec[name][1] if len(spec[name]) > 1 else {}
                if opts.get("control_after_generate"):
                    values.append("fixed")
                if opts.get("image_upload"):
                    values.append("image")
            node = {"id": n["id"], "type": n["type"], "pos": n["pos"], "size": n["size"], "flags": {},
                    "order": order[n["id"]], "mode": 0, "inputs": inputs, "outputs": outputs,
                    "properties": {"Node name for S&R": n["type"]}, "widgets_values": values}
            if n["title"]:
                node["title"] = n["title"]
            nodes.append(node)
        ui_links = [[lid, a, sa, b, self._slot(b, name), typ] for lid, a, sa, b, name, typ in links]
        return {"last_node_id": len(self.nodes), "last_link_id": len(links), "nodes": nodes, "links": ui_links,
                "groups": [], "config": {}, "extra": {"ds": view(self.nodes)}, "version": 0.4}

    def _slot(self, node_id, name) -> int:
        n = self.nodes[node_id - 1]
        cls = CLASSES[n["type"]]
        present = [k for k, (t, req) in socket_inputs(cls).items() if req or n["inputs"].get(k) is not None]
        return present.index(name)

    def _order(self) -> dict:
        done, order = set(), {}
        while len(done) < len(self.nodes):
            for n in self.nodes:
                deps = {v[0]["id"] for v in n["inputs"].values() if isinstance(v, tuple)}
                if n["id"] not in done and deps <= done:
                    order[n["id"]] = len(order)
                    done.add(n["id"])
        return order

    # -- API format ----------------------------------------------------------------------------------------
    def api(self) -> dict:
        out = {}
        for n in self.nodes:
            if n["type"] == "Note":
                continue
            inputs = {k: ([str(v[0]["id"]), v[1]] if isinstance(v, tuple) else v)
                      for k, v in n["inputs"].items() if v is not None}
            title = n["title"] or DISPLAY.get(n["type"], n["type"])
            out[str(n["id"])] = {"inputs": inputs, "class_type": n["type"], "_meta": {"title": title}}
        return out


# ---------------------------------------------------------------------------------------------- layout


def below(node) -> int:
    """The y of a node placed under `node`."""
    return node["pos"][1] + node["size"][1] + TITLE + GAP


def view(nodes) -> dict:
    """The saved view (extra.ds) ComfyUI opens a workflow at: the graph's top-left corner (the note's title)
    VIEW_MARGIN px from the canvas' corner at VIEW_SCALE. The canvas draws graph point p at (p + offset) * scale."""
    left = min(n["pos"][0] for n in nodes)
    top = min(n["pos"][1] for n in nodes) - TITLE
    return {"scale": VIEW_SCALE, "offset": [VIEW_MARGIN[0] / VIEW_SCALE - left, VIEW_MARGIN[1] / VIEW_SCALE - top]}


# ---------------------------------------------------------------------------------------------- the graphs

def loaders(g, model_file=MODEL_FILE, files=(TE_FILE, VAE_FILE)):
    m = g.add("QwenImageModelLoader", (COL[0], ROW0), (300, 82), unet_name=model_file, weight_dtype="default",
              gpu_blocks=-1)
    t = g.add("QwenImageTextEncoderLoader", (COL[0], below(m)), (300, 82), clip_name=files[0], device="default")
    v = g.add("QwenImageVAELoader", (COL[0], below(t)), (300, 58), vae_name=files[1])
    return m, t, v


def prompts(g, t, text):
    pos = g.add("QwenImageTextEncode", (COL[1], ROW0), (360, PROMPT_H), text_encoder=(t, 0), text=text)
    neg = g.add("QwenImageTextEncode", (COL[1], below(pos)), (360, NEGATIVE_H), text_encoder=(t, 0), text=NEGATIVE,
                title="Negative prompt")
    return pos, neg


def tail(g, model, pos, neg, latent, vae, *, steps=50, cfg=4.0, shift_mode="dynamic", shift=3.1, denoise=1.0,
         mask=None, prefix="Qwen-Image", seed=42, preview_vae=False):
    s = g.add("QwenImageSampler", (COL[2], 0), (300, 350), model=(model, 0), positive=pos, negative=neg,
              latent=latent, seed=seed, steps=steps, cfg=cfg, shift_mode=shift_mode, shift=shift, denoise=denoise,
              mask=mask, vae=(vae, 0) if preview_vae else None)
    d = g.add("QwenImageVAEDecode", (COL[2], below(s)), (300, 150), vae=(vae, 0), samples=(s, 0), tiled=False,
              tile_size=256, overlap=64)
    g.add("SaveImage", (COL[3], 0), (360, 420), images=(d, 0), filename_prefix=prefix)
    return s


def text_to_image(lora=None, lightning=False):
    title = "Qwen-Image: text to image" + (" with a LoRA" if lora else "") + (", 8 steps (Lightning)" if lightning else "")
    g = Graph(title)
    m, t, v = loaders(g)
    model = m
    if lora:
        model = g.add("QwenImageLoraLoader", (COL[0], below(v)), (300, 82), model=(m, 0), lora_name=lora,
                      strength=1.0 if lightning else 0.8)
    pos, neg = prompts(g, t, 'A coffee shop entrance with a chalkboard sign that reads "Qwen Coffee 😊 $2 per cup", '
                             'a neon light beside it displaying "通义千问", warm morning light, photorealistic')
    lat = g.add("QwenImageEmptyLatent", (COL[1], below(neg)), (300, 130), aspect="16:9 (1664x928)", width=1664,
                height=928, batch_size=1)
    kw = dict(steps=8, cfg=1.0, shift_mode="fixed", shift=3.1) if lightning else {}
    tail(g, model, (pos, 0), (neg, 0), (lat, 0), v, **kw)
    note = DOWNLOADS
    if lora:
        note += (f"\n- loras/{lora}  (lightx2v/Qwen-Image-Lightning: 8 steps, cfg 1)" if lightning else
                 f"\n- loras/{lora}  (any Qwen-Image LoRA: kohya, diffusers, ComfyUI, LyCORIS formats)")
    g.note(note + ("\nLightning: 8 steps at cfg 1 (guidance is distilled in), fixed shift 3.1." if
                              lightning else "\nOfficial settings: 50 steps, true CFG 4, the dynamic shift."))
    return g


def from_image(title, image, text, note, inpaint=False):
    """Image-to-image (denoise 0.7) or inpainting (Load Image's mask, full denoise)."""
    g = Graph(title)
    m, t, v = loaders(g)
    img = g.add("LoadImage", (COL[0], below(v)), (300, 320), image=image)
    enc = g.add("QwenImageVAEEncode", (COL[1], ROW0 + PROMPT_H + NEGATIVE_H + 2 * (TITLE + GAP)), (300, 150),
                vae=(v, 0), pixels=(img, 0), tiled=False, tile_size=256, overlap=64)  # under the prompts
    pos, neg = prompts(g, t, text)
    tail(g, m, (pos, 0), (neg, 0), (enc, 0), v, **(dict(mask=(img, 1)) if inpaint else dict(denoise=0.7)))
    g.note(DOWNLOADS + note)
    return g


def image_to_image():
    return from_image("Qwen-Image: image to image", "example.png",
                      "The same scene as a watercolor painting, soft washes of colour",
                      "\nLoad your picture (sides multiples of 16: resize first). denoise sets how much changes: "
                      "0.7 keeps the composition.")


def inpainting():
    return from_image("Qwen-Image: inpainting", "example_mask.png", "A bright red door with a brass handle",
                      "\nPaint the area to change in the image editor of Load Image (right click, Open in "
                      "MaskEditor): the masked part is repainted, the rest kept.", inpaint=True)


def edit(multi=False):
    g = Graph("Qwen-Image-Edit: " + ("multi-image edit" if multi else "edit"))
    m, t, v = loaders(g, EDIT_FILE)
    img1 = g.add("LoadImage", (COL[0], below(v)), (300, 320), image="example.png")
    extra = {}
    text = ("Put the person of picture 1 in the scene of picture 2, at golden hour" if multi else
            "Change the sky to a starry night and add the text \"Qwen\" in neon on the wall")
    if multi:  # under the prompts: the second picture
        img2 = g.add("LoadImage", (COL[1], ROW0 + 220 + 170 + 2 * (TITLE + GAP)), (300, 320), image="example_2.png")
        extra = {"image2": (img2, 0)}
    pos = g.add("QwenImageEditEncode", (COL[1], ROW0), (360, 220), text_encoder=(t, 0), vae=(v, 0), prompt=text,
                image1=(img1, 0), template="edit_plus (Edit-2509/2511)", **extra)
    neg = g.add("QwenImageEditEncode", (COL[1], below(pos)), (360, 170), text_encoder=(t, 0), vae=(v, 0),
                prompt=NEGATIVE, image1=(img1, 0), template="edit_plus (Edit-2509/2511)", title="Negative prompt",
                **extra)
    tail(g, m, (pos, 0), (neg, 0), (pos, 1), v, steps=40)
    g.note(EDIT_DOWNLOADS + "\nThe output takes the last picture's aspect at about a megapixel. "
                                       "Official settings: 40 steps, true CFG 4." +
           ("\nUp to 3 pictures: wire image3 for a third." if multi else ""))
    return g


DEMO_FILES = {"unet": "qwen_image_demo.safetensors", "clip": "qwen_image_demo_text_encoder.safetensors",
              "vae": "qwen_image_demo_vae.safetensors"}
DEMO_SIZE, DEMO_STEPS, DEMO_CFG = 64, 20, 1.0  # trained without dropped captions: no CFG


def demo():
    """The demo model shipped in demo/models/ (built by python -m qwenimage.training.demo): seconds on a CPU."""
    g = Graph("Qwen-Image demo: a tiny model trained here on shapes, colours and words")
    m, t, v = loaders(g, DEMO_FILES["unet"], (DEMO_FILES["clip"], DEMO_FILES["vae"]))
    pos, neg = prompts(g, t, "a blue triangle on a white background")
    lat = g.add("QwenImageEmptyLatent", (COL[1], below(neg)), (300, 130), aspect="custom", width=DEMO_SIZE,
                height=DEMO_SIZE, batch_size=1)
    # the demo VAE has latent statistics of its own: the sampler's live previews need it to show its colours
    tail(g, m, (pos, 0), (neg, 0), (lat, 0), v, steps=DEMO_STEPS, cfg=DEMO_CFG, prefix="Qwen-Image-demo",
         preview_vae=True)
    g.note("The demo model: a 64 x 64 px Qwen-Image-architecture model our trainer made from synthetic "
                      "data. qwenimage serve lists its files from demo/models/ as they are; in ComfyUI copy them "
                      "into ComfyUI/models/: diffusion_models/" + DEMO_FILES["unet"] + ", text_encoders/"
                      + DEMO_FILES["clip"] + ", vae/" + DEMO_FILES["vae"] + ".\nIt knows square, circle, "
                      "triangle; red, green, blue, yellow, purple, orange; backgrounds white, black, gray, blue, "
                      "green. Colours and backgrounds it gets right, shapes about three times in five. CFG 1: it "
                      "never saw an empty prompt, so true CFG has nothing to push away from.\nTry: a green square "
                      "on a gray background.")
    return g


# name -> (build, the template browser card's title, its one-line description). Our server offers these as the
# core template index (titles shown); ComfyUI lists a pack's templates by file name and ignores extra.template.
# (The frontend shows a description with its - and _ as spaces: write none.)
WORKFLOWS = {
    "demo": (demo, "Demo: a tiny model trained here",
             "Seconds on a CPU: shapes, colours and words at 64 x 64 px, from the model files in demo/models."),
    "text_to_image": (lambda: text_to_image(), "Text to image",
                      "Qwen-Image at its official settings: 50 steps, true CFG 4, the dynamic shift."),
    "image_to_image": (image_to_image, "Image to image",
                       "Repaints a picture after a prompt; denoise sets how much changes."),
    "inpainting": (inpainting, "Inpainting", "Repaints the masked part of a picture, keeping the rest."),
    "edit": (lambda: edit(False), "Edit a picture",
             "Qwen Image Edit 2509 changes a picture as the prompt says."),
    "multi_image_edit": (lambda: edit(True), "Edit with several pictures",
                         "Qwen Image Edit 2509 combines up to three pictures as the prompt says."),
    "text_to_image_lora": (lambda: text_to_image(lora="qwen_image_style_lora.safetensors"), "Text to image with a LoRA",
                           "A LoRA chained onto the model: kohya, diffusers, ComfyUI or LyCORIS files."),
    "lightning_8_steps": (lambda: text_to_image(lora="Qwen-Image-Lightning-8steps-V1.0.safetensors", lightning=True),
                          "Lightning: 8 steps", "The Lightning LoRA: 8 steps at cfg 1, fixed shift 3.1."),
}


THUMB_SIZE = (320, 200)  # px; the template browser's cards are about this size
KIND_COLOURS = {"Loader": (58, 92, 140), "Encode": (70, 120, 80), "Sampler": (140, 90, 50),
                "Latent": (110, 80, 140), "Image": (120, 70, 70), "Note": (100, 80, 40)}


def _colour(node_type: str):
    return next((c for k, c in KIND_COLOURS.items() if k in node_type), (80, 80, 90))


def thumbnail(ui: dict):
    """A small drawing of the graph for the template browser's card: each node a box in its kind's colour with
    its title bar, each link a line. Drawn from the workflow alone, so it is the same picture every time."""
    from PIL import Image, ImageDraw

    nodes = ui["nodes"]
    x0 = min(n["pos"][0] for n in nodes)
    y0 = min(n["pos"][1] for n in nodes) - TITLE
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes)
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes)
    pad = 10
    k = min((THUMB_SIZE[0] - 2 * pad) / (x1 - x0), (THUMB_SIZE[1] - 2 * pad) / (y1 - y0))

    def at(x, y):
        return pad + (x - x0) * k, pad + (y - y0) * k

    im = Image.new("RGB", THUMB_SIZE, (32, 32, 36))
    d = ImageDraw.Draw(im)
    by_id = {n["id"]: n for n in nodes}
    for _, a, _, b, _, _ in ui["links"]:
        na, nb = by_id[a], by_id[b]
        d.line([at(na["pos"][0] + na["size"][0], na["pos"][1] + 10), at(nb["pos"][0], nb["pos"][1] + 10)],
               fill=(150, 150, 160), width=1)
    for n in nodes:
        c = _colour(n["type"])
        top = at(n["pos"][0], n["pos"][1] - TITLE)
        bottom = at(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        d.rectangle([top, bottom], fill=tuple(v // 2 for v in c), outline=c)
        d.rectangle([top, at(n["pos"][0] + n["size"][0], n["pos"][1])], fill=c)
    return im


def main() -> None:
    out = os.path.join(ROOT, "workflows")
    os.makedirs(os.path.join(out, "api"), exist_ok=True)  # apart: ComfyUI lists every workflows/*.json as a template
    for name, (build, title, description) in WORKFLOWS.items():
        g = build()
        ui = g.ui()
        ui["extra"]["template"] = {"title": title, "description": description}
        for sub, data in (("", ui), ("api", g.api())):
            with open(os.path.join(out, sub, f"{name}.json"), "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2, ensure_ascii=False)
                fh.write("\n")
        # the template browser's card: <name>.jpg beside <name>.json (ComfyUI's convention for a pack's templates)
        thumbnail(ui).save(os.path.join(out, f"{name}.jpg"), quality=85, optimize=True)
        print(f"workflows/{name}.json, workflows/{name}.jpg, workflows/api/{name}.json")


if __name__ == "__main__":
    main()
