"""The editor's first screen in `qwenimage serve` (issue 18), without a browser: which graph the server hands the
frontend (the demo when its model files are present, else text-to-image with a note saying where the files go),
and that the JS extension that swaps it in is served and listed as a pack's extension. test_browser.py checks the
page itself."""
import copy
import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from qwenimage.nodes import host
from qwenimage.nodes import server as S
from qwenimage.nodes.server import first_screen as F

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
FILES = {"diffusion_models": "qwen_image_fp8_e4m3fn.safetensors", "text_encoders":
         "qwen_2.5_vl_7b_fp8_scaled.safetensors", "vae": "qwen_image_vae.safetensors"}


@pytest.fixture
def models(tmp_path):
    """An empty models folder as the host's; restored after."""
    old = host.models_dir()
    host.set_models_dir(tmp_path / "models")
    yield tmp_path / "models"
    host.set_models_dir(old)


@pytest.fixture
def t2i_only(tmp_path):
    """A workflows folder with text-to-image only (the real one's demo may be runnable here: the shipped demo files)."""
    folder = tmp_path / "workflows"
    (folder / "api").mkdir(parents=True)
    for n in ("text_to_image", "api/text_to_image"):
        shutil.copy(WORKFLOWS / f"{n}.json", folder / f"{n}.json")
    return folder


def put_files(models_dir, files=FILES):
    for kind, name in files.items():
        (models_dir / kind).mkdir(parents=True, exist_ok=True)
        (models_dir / kind / name).write_bytes(b"")  # listed by name; nothing loads them here


def mappings():
    return S.default_mappings()[0]


def load(name):
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def node(wf, type_):
    return next(n for n in wf["nodes"] if n["type"] == type_)


def test_no_model_files_gives_text_to_image_with_a_note_naming_folder_and_files(models, t2i_only):
    name, wf = F.first_workflow(mappings(), t2i_only)
    assert name == "text_to_image"
    note = node(wf, "Note")["widgets_values"][0]
    assert str(models.resolve()) in note
    for kind, file in FILES.items():
        assert f"{kind}/{file}" in note
    shipped = load("text_to_image")
    # the graph is the shipped one: same nodes, links and view; only the note's text differs
    strip = lambda w: [{k: v for k, v in n.items() if k != "widgets_values"} for n in w["nodes"]]  # noqa: E731
    assert strip(wf) == strip(shipped) and wf["links"] == shipped["links"] and wf["extra"] == shipped["extra"]


TITLE = 30  # the frontend draws a node's title bar above its position


def _box(n):
    return (n["pos"][0], n["pos"][1] - TITLE, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])


@pytest.mark.parametrize("name", sorted(p.stem for p in WORKFLOWS.glob("*.json")))
def test_shipped_workflows_read_well_at_their_saved_view(name):
    """Issue 24: no node (title bar included) overlaps another; the note is top left; at the view ComfyUI
    restores, the whole graph is on a 1366 x 768 screen clear of the sidebar (left) and the menu (top), at a
    scale where the canvas draws text."""
    wf = load(name)
    boxes = {n["id"]: _box(n) for n in wf["nodes"]}
    for a, ba in boxes.items():
        for b, bb in boxes.items():
            assert a >= b or ba[2] <= bb[0] or bb[2] <= ba[0] or ba[3] <= bb[1] or bb[3] <= ba[1], (name, a, b)
    note = _box(node(wf, "Note"))
    assert note[:2] == (min(b[0] for b in boxes.values()), min(b[1] for b in boxes.values()))
    ds = wf["extra"]["ds"]
    screen = lambda x, y: ((x + ds["offset"][0]) * ds["scale"], (y + ds["offset"][1]) * ds["scale"])  # noqa: E731
    assert ds["scale"] >= 0.6
    for box in boxes.values():
        left, top = screen(*box[:2])
        right, bottom = screen(*box[2:])
        assert left >= 60 and top >= 80 and right <= 1366, (name, box, (left, top, right, bottom))
    out = _box(node(wf, "SaveImage"))
    assert screen(*out[2:])[1] <= 768 - 40, name  # the output at least, whatever the height


def test_note_lists_only_the_files_that_are_missing(models, t2i_only):
    put_files(models, {"vae": FILES["vae"]})
    _, wf = F.first_workflow(mappings(), t2i_only)
    note = node(wf, "Note")["widgets_values"][0]
    assert "diffusion_models/" + FILES["diffusion_models"] in note and "vae/" not in note


def test_with_the_files_the_shipped_note_stays(models, t2i_only):
    put_files(models)
    name, wf = F.first_workflow(mappings(), t2i_only)
    assert name == "text_to_image"
    assert node(wf, "Note")["widgets_values"] == node(load("text_to_image"), "Note")["widgets_values"]


def test_demo_when_its_files_are_present(models, t2i_only):
    folder = t2i_only
    # a stand-in demo: a graph whose model files we control
    shutil.copy(WORKFLOWS / "text_to_image.json", folder / "demo.json")
    shutil.copy(WORKFLOWS / "api" / "text_to_image.json", folder / "api" / "demo.json")
    assert F.first_workflow(mappings(), folder)[0] == "text_to_image"  # no files: the demo cannot run
    put_files(models)
    name, wf = F.first_workflow(mappings(), folder)
    assert name == "demo" and [n["type"] for n in wf["nodes"]] == [n["type"] for n in load("text_to_image")["nodes"]]
    (folder / "api" / "demo.json").unlink()  # a demo without its API twin cannot be checked: not offered
    assert F.first_workflow(mappings(), folder)[0] == "text_to_image"


def test_a_workflow_without_a_note_gets_one_above_it():
    wf = load("text_to_image")
    wf["nodes"] = [n for n in wf["nodes"] if n["type"] != "Note"]
    before = copy.deepcopy(wf)
    out = F._with_note(wf, "put files here")
    assert wf == before  # the input is not changed
    note = node(out, "Note")
    assert note["widgets_values"] == ["put files here"]
    assert note["id"] == max(n["id"] for n in before["nodes"]) + 1 == out["last_node_id"]
    assert note["pos"][1] + note["size"][1] < min(n["pos"][1] for n in before["nodes"])


def test_root_package_declares_no_web_directory():
    """Inside ComfyUI the extension is not loaded: ComfyUI's own default graph works there."""
    import qwenimage

    assert not hasattr(qwenimage, "WEB_DIRECTORY")


@pytest.fixture
def server(models, tmp_path):
    srv = S.PromptServer(user_dir=tmp_path / "user")
    with S.ServerThread(srv) as url:
        yield url


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def test_served_listed_and_answered(server):
    status, _, body = get(server + "/extensions")
    listed = json.loads(body)
    assert "/extensions/qwenimage/first_screen.js" in listed
    assert any(p.startswith("/extensions/core/") for p in listed)  # the frontend's own stay
    status, ctype, body = get(server + "/extensions/qwenimage/first_screen.js")
    assert status == 200 and "javascript" in ctype and b"registerExtension" in body and b"beforeConfigureGraph" in body
    expected = F.first_workflow(mappings(), WORKFLOWS)  # the demo when the shipped demo files are there
    for prefix in ("", "/api"):
        status, _, body = get(server + prefix + "/qwenimage/first_screen")
        assert json.loads(body) == {"name": expected[0], "workflow": expected[1]}
    settings = json.loads(get(server + "/settings")[2])
    assert settings["Comfy.Workflow.ShowMissingNodesWarning"] is False  # our message replaces the pack hint


def test_serve_imports_what_the_first_run_needs_before_it(tmp_path, monkeypatch):
    """Issue 24 item 7: transformers' Qwen2.5-VL import was ~80% of a cold first Run. `qwenimage serve` has its
    worker import it at start, while the user opens the page (here: a stand-in module, as the suite imported
    transformers long ago; web.run_app stopped at once)."""
    import sys
    import time

    from qwenimage.nodes.server import app as A
    from qwenimage.nodes.server import run as R

    made = []
    monkeypatch.setattr(R.web, "run_app", lambda app, **kw: made.append(app[A.SERVER]))
    old = (host.models_dir(), host.input_dir(), host.output_dir(), host.temp_dir())
    try:
        R.serve(port=1, models_dir=tmp_path / "models", input_dir=tmp_path / "in", output_dir=tmp_path / "out",
                temp_dir=tmp_path / "tmp", user_dir=tmp_path / "user")
    finally:
        host.set_models_dir(old[0])
        host.set_dirs(*old[1:])
    assert "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl" in made[0].warm_modules

    (tmp_path / "warm_probe_24.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "warm_probe_24", raising=False)
    srv = S.PromptServer(user_dir=tmp_path / "user")
    srv.warm_modules = ("warm_probe_24",)
    with S.ServerThread(srv):
        deadline = time.monotonic() + 30
        while "warm_probe_24" not in sys.modules and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "warm_probe_24" in sys.modules
