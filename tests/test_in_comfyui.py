"""The pack as ComfyUI runs it, with stand-ins for ComfyUI's modules (the real ones' names and signatures, as in
ComfyUI 0.8.0): the loaders list the shipped demo files from ComfyUI's folder_paths and nothing else, the demo
graph makes the picture its prompt asks for, and live previews follow ComfyUI's --preview-method as its own
samplers do (its progress hook sends whatever it is given). The real ComfyUI is checked by
scripts/check_in_comfyui.sh, which the suite cannot run (no ComfyUI checkout here)."""
import enum
import importlib.util
import json
import os
import sys
import types

import pytest
import torch

from test_demo import classify

from qwenimage.training.demo import FILES, demo_paths

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LatentPreviewMethod(enum.Enum):  # comfy.cli_args.LatentPreviewMethod
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """ComfyUI's modules (stand-ins) over a ComfyUI models folder holding links to the demo files; the pack
    imported once, the way ComfyUI imports a custom node folder. Yields (pack module, models folder, state)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from _comfy(monkeypatch, tmp_path_factory.mktemp("comfyui"))


def _comfy(monkeypatch, tmp_path):
    models = tmp_path / "models"
    for kind, path in demo_paths().items():
        (models / kind).mkdir(parents=True)
        os.symlink(path, models / kind / FILES[kind])
    state = {"bars": [], "args": types.SimpleNamespace(preview_method=LatentPreviewMethod.NoPreviews,
                                                        preview_size=512)}
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models)
    fp.folder_names_and_paths = {k: ([str(models / k)], set()) for k in ("diffusion_models", "text_encoders", "vae")}
    fp.get_folder_paths = lambda kind: [os.path.join(fp.models_dir, kind)]
    fp.get_filename_list = lambda kind: sorted(os.listdir(os.path.join(fp.models_dir, kind))) \
        if os.path.isdir(os.path.join(fp.models_dir, kind)) else []
    for name in ("input", "output", "temp"):
        setattr(fp, f"get_{name}_directory", lambda n=name: str(tmp_path / n))
    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.interrupt_current_processing = lambda v=True: None
    mm.processing_interrupted = lambda: False
    mm.throw_exception_if_processing_interrupted = lambda: None
    state["freed"] = []
    mm.free_memory = lambda memory_required, device, keep_loaded=[]: state["freed"].append((memory_required, device))
    mm.unload_all_models = lambda: mm.free_memory(1e30, mm.get_torch_device())  # as ComfyUI's own does

    class ProgressBar:
        def __init__(self, total):
            state["bars"].append([])

        def update_absolute(self, value, total=None, preview=None):
            state["bars"][-1].append(preview)

    cu = types.ModuleType("comfy.utils")
    cu.ProgressBar = ProgressBar
    ca = types.ModuleType("comfy.cli_args")
    ca.args, ca.LatentPreviewMethod = state["args"], LatentPreviewMethod
    pkg = types.ModuleType("comfy")
    pkg.__path__ = []
    pkg.model_management, pkg.utils, pkg.cli_args = mm, cu, ca
    for name, mod in {"folder_paths": fp, "comfy": pkg, "comfy.model_management": mm, "comfy.utils": cu,
                      "comfy.cli_args": ca}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    name = "/comfy/custom_nodes/qwenimage".replace(".", "_x_")  # ComfyUI's module name for a node folder
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    assert sys.modules[name + ".nodes.host"].IN_COMFYUI
    try:
        yield module, models, state
    finally:
        sys.modules[name + ".nodes.host"].free_memory()
        for sub in [m for m in sys.modules if m.startswith(name + ".")]:
            del sys.modules[sub]


def _run_demo(nodes, steps):
    """The shipped demo graph (workflows/api/demo.json) node by node, up to the decoded image."""
    with open(os.path.join(REPO, "workflows", "api", "demo.json"), encoding="utf-8") as fh:
        graph = json.load(fh)
    out = {}
    for nid in ("1", "2", "3", "4", "5", "6", "7", "8"):
        spec = graph[nid]
        kw = {k: out[v[0]][v[1]] if isinstance(v, list) else v for k, v in spec["inputs"].items()}
        if spec["class_type"] == "QwenImageSampler":
            kw["steps"] = steps
        cls = nodes[spec["class_type"]]
        out[nid] = getattr(cls(), cls.FUNCTION)(**kw)
    return graph["4"]["inputs"]["text"], out["8"][0]


def test_loaders_list_what_comfyui_lists_and_nothing_else(comfy):
    module, models, _ = comfy
    nodes = module.NODE_CLASS_MAPPINGS
    listed = {"diffusion_models": nodes["QwenImageModelLoader"].INPUT_TYPES()["required"]["unet_name"][0],
              "text_encoders": nodes["QwenImageTextEncoderLoader"].INPUT_TYPES()["required"]["clip_name"][0],
              "vae": nodes["QwenImageVAELoader"].INPUT_TYPES()["required"]["vae_name"][0]}
    assert listed == {k: [v] for k, v in FILES.items()}
    link = models / "vae" / FILES["vae"]
    target = os.readlink(link)
    os.unlink(link)  # inside ComfyUI the pack lists no file of its own (its demo/ included)
    try:
        assert FILES["vae"] not in nodes["QwenImageVAELoader"].INPUT_TYPES()["required"]["vae_name"][0]
    finally:
        os.symlink(target, link)


def test_demo_graph_draws_the_prompt_without_previews_when_comfyui_wants_none(comfy):
    module, _, state = comfy
    text, image = _run_demo(module.NODE_CLASS_MAPPINGS, steps=20)
    from PIL import Image

    im = Image.fromarray((image[0].numpy() * 255).round().astype("uint8"))
    assert classify(im)[2] == text.split()[-2], (text, classify(im))  # "... on a white background"
    assert len(state["bars"][-1]) == 20 and all(p is None for p in state["bars"][-1])


def test_previews_follow_comfyuis_preview_method(comfy):
    module, _, state = comfy
    state["args"].preview_method, state["args"].preview_size = LatentPreviewMethod.Auto, 256
    _run_demo(module.NODE_CLASS_MAPPINGS, steps=2)
    sent = state["bars"][-1]
    assert [(p[0], p[2]) for p in sent] == [("JPEG", 256)] * 2
    assert all(p[1].size == (64, 64) for p in sent)  # a PIL image of the latent, as ComfyUI's hook expects


class FakeGPUModel:
    """A model that says it computes on cuda:0 and records where it is moved (no GPU needed)."""

    def __init__(self):
        self.device, self.moves = torch.device("cuda", 0), []

    def parameters(self):
        return [torch.zeros(256)]  # 1 KiB of weights

    def to(self, device):
        self.device = torch.device(device)
        self.moves.append(str(self.device))
        return self


def test_our_models_give_comfyui_the_room_it_asks_for(comfy, monkeypatch):
    """ComfyUI cannot see our models (they are not its ModelPatchers): its free_memory (which Unload Models and
    /free call through unload_all_models) moves ours to CPU memory when the room is short and drops our cache on
    "unload all"; a model moved away comes back on its next use, after asking ComfyUI for the room; a loader asks
    ComfyUI for the file's size before loading."""
    module, models, state = comfy
    host = sys.modules[module.__name__ + ".nodes.host"]
    mm = sys.modules["comfy.model_management"]
    assert mm.free_memory._qwenimage_hook and not host.install_comfy_hooks()  # wrapped once
    fake = host.MODELS.get("test:gpu", ("k",), FakeGPUModel)
    monkeypatch.setattr(host, "_free_bytes", lambda dev: 0.0)  # the device is full
    state["freed"].clear()
    mm.free_memory(1024, torch.device("cuda", 0))
    assert state["freed"] == [(1024, torch.device("cuda", 0))]  # ComfyUI's own freeing still runs
    assert fake.moves == ["cpu"] and "test:gpu" in host.MODELS.stats()
    mm.free_memory(1024, torch.device("cuda", 1))  # another device: ours stay where they are
    assert fake.moves == ["cpu"]
    assert host.on_device(fake) is fake and fake.moves == ["cpu", "cuda:0"]
    assert state["freed"][-1] == (1024, torch.device("cuda", 0))  # asked for its room before moving back
    host.on_device(fake)
    assert fake.moves == ["cpu", "cuda:0"]  # already home: nothing moves
    asked = []
    with monkeypatch.context() as m:
        m.setattr(host, "make_room", lambda nbytes, dev: asked.append((nbytes, dev)))
        module.NODE_CLASS_MAPPINGS["QwenImageVAELoader"]().load(FILES["vae"], unique_id="room")
    assert asked == [(os.path.getsize(models / "vae" / FILES["vae"]), torch.device("cpu"))]
    monkeypatch.setattr(mm, "get_torch_device", lambda: torch.device("cuda", 0))
    mm.unload_all_models()
    assert fake.moves == ["cpu", "cuda:0", "cpu"] and host.MODELS.stats() == {}
