"""The official ComfyUI frontend, served by `qwenimage serve`, in a real headless Chromium: it boots, loads every
shipped workflow (UI format) through its own JS API, queues it against tiny models, and shows the output image;
no request fails and the console shows no error. Screenshots land in the test's tmp folder.

Needs Debian's `chromium` (`.ci/run` installs it when it runs as root); skipped with the reason otherwise."""
import asyncio
import glob
import json
import os
import time

import pytest

from _browser import Browser, find_chromium

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = sorted(p for p in glob.glob(os.path.join(REPO, "workflows", "*.json")) if not p.endswith("_api.json"))

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="no Chromium found (apt-get install -y chromium; .ci/run does it as root)")

# Cheaper graphs for a CPU: 2 sampler steps, a 64x48 empty latent (the node-pack tests' speed_up, in the page)
SPEED_UP = """(() => {
  for (const n of app.graph._nodes) {
    const w = name => (n.widgets || []).find(x => x.name === name);
    if (n.type === 'QwenImageSampler') w('steps').value = 2;
    if (n.type === 'QwenImageEmptyLatent') { w('aspect').value = 'custom'; w('width').value = 64; w('height').value = 48; }
  }
  return true;
})()"""

LISTEN = """(() => {
  window.__events = [];
  for (const e of ['execution_start', 'executing', 'progress', 'executed', 'execution_cached',
                   'execution_success', 'execution_error', 'execution_interrupted', 'b_preview'])
    app.api.addEventListener(e, ev => window.__events.push([e, e === 'b_preview' ? ev.detail.size : ev.detail]));
  return true;
})()"""

OUTPUT_IMAGES = """JSON.stringify(app.graph._nodes.filter(n => n.type === 'SaveImage' || n.type === 'PreviewImage')
  .map(n => (n.imgs || []).map(i => ({src: i.src, w: i.naturalWidth, complete: i.complete}))))"""


@pytest.fixture(scope="module")
def served(tmp_path_factory, tokenizer):
    from _models import write_input_images, write_tiny_models

    from qwenimage.nodes import host
    from qwenimage.nodes import server as S

    root = tmp_path_factory.mktemp("browser")
    write_tiny_models(root / "models", len(tokenizer))
    write_input_images(root / "input")
    old = (host.models_dir(), host.input_dir(), host.output_dir(), host.temp_dir())
    S.configure(root / "models", root / "input", root / "output", root / "temp")
    srv = S.PromptServer(user_dir=root / "user")
    thread = S.ServerThread(srv)
    url = thread.start()
    yield {"url": url, "root": root, "server": srv}
    thread.stop()
    host.set_models_dir(old[0])
    host.set_dirs(*old[1:])
    host.free_memory()


def test_frontend_runs_every_workflow(served, tmp_path):
    assert WORKFLOWS, "no workflows/*.json to load"
    report = asyncio.run(_drive(served, tmp_path))
    print(json.dumps(report, indent=1))


async def _drive(served, tmp_path):
    url, report = served["url"], {"screenshots": [], "runs": {}}
    async with Browser.launch(tmp_path) as browser:
        page = await browser.new_page()
        t0 = time.monotonic()
        await page.goto(url + "/")
        await page.wait_for("window.app && app.graph && app.api && typeof LiteGraph !== 'undefined' && "
                            "!!document.querySelector('canvas')", timeout=90)
        # the node definitions arrived from /object_info
        assert await page.eval("!!LiteGraph.registered_node_types['QwenImageSampler'] && "
                               "!!LiteGraph.registered_node_types['SaveImage']")
        report["boot_s"] = round(time.monotonic() - t0, 1)
        await page.eval(LISTEN)
        for path in WORKFLOWS:
            name = os.path.splitext(os.path.basename(path))[0]
            with open(path) as f:
                workflow = json.load(f)
            await page.eval("window.__events.length = 0; true")
            await page.eval(f"app.loadGraphData({json.dumps(workflow)}).then(() => true)")
            assert await page.eval("app.graph._nodes.length") == len(workflow["nodes"]), name
            await page.eval(SPEED_UP)
            t = time.monotonic()
            queued = await page.eval("app.queuePrompt(0).then(r => r)")
            assert queued is not False, f"{name}: the frontend refused to queue"
            await page.wait_for("window.__events.some(e => ['execution_success', 'execution_error', "
                                "'execution_interrupted'].includes(e[0]))", timeout=120)
            events = await page.eval("JSON.stringify(window.__events)")
            events = json.loads(events)
            kinds = [e[0] for e in events]
            err = [e[1] for e in events if e[0] == "execution_error"]
            assert not err, f"{name}: {err[0].get('node_type')}: {err[0].get('exception_message')}"
            assert "execution_success" in kinds and "executed" in kinds, (name, kinds)
            # the output image arrives in the page: the SaveImage node holds it, loaded from /api/view
            imgs = await page.wait_for(f"(() => {{ const r = {OUTPUT_IMAGES}; "
                                       "return JSON.parse(r).flat().some(i => i.complete && i.w > 0) ? r : ''; })()",
                                       timeout=30)
            shown = [i for group in json.loads(imgs) for i in group]
            assert any("/api/view?" in i["src"] and "type=output" in i["src"] for i in shown), (name, shown)
            await page.eval("(async () => { try { await app.extensionManager.command.execute('Comfy.Canvas.FitView') }"
                            " catch (e) {} return true })()")
            await asyncio.sleep(0.5)  # let the canvas draw it
            shot = tmp_path / f"{name}.png"
            await page.screenshot(shot)
            report["screenshots"].append(str(shot))
            report["runs"][name] = {"seconds": round(time.monotonic() - t, 1),
                                    "events": sorted(set(kinds)), "images": [i["src"].split("?")[1] for i in shown]}
            assert "progress" in kinds and "b_preview" in kinds, (name, sorted(set(kinds)))
        await asyncio.sleep(0.5)
        failures = page.failures()
        errors = page.console_errors()
        report["requests"] = len(page.requests)
    assert not failures, "failed requests:\n" + "\n".join(failures)
    assert not errors, "console errors:\n" + "\n".join(errors)
    return report
