"""A screenshot of `qwenimage serve`'s first screen, as a new browser sees it (the README's docs/first_screen.png).

    python scripts/first_screen_png.py docs/first_screen.png [--models-dir DIR] [--without-demo]

Starts the server on a free port with DIR as its models folder (default: a new empty one, so the page shows the
note saying where the model files go, unless the shipped demo files are found: then the demo; --without-demo
hides them) and a fresh user folder, opens the editor in a fresh headless Chromium
profile (tests/_browser.py), waits for the graph and saves the page as PNG. Needs Chromium."""
import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from _browser import Browser, open_editor  # noqa: E402

from qwenimage.nodes import host  # noqa: E402
from qwenimage.nodes import server as S  # noqa: E402


async def shoot(url, out: Path, work: Path):
    async with Browser.launch(work) as browser:
        page = await open_editor(browser, url)
        await asyncio.sleep(2.0)  # let the canvas fit the graph and draw
        await page.screenshot(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument("--without-demo", action="store_true", help="hide the shipped demo model (demo/models/)")
    a = ap.parse_args(argv)
    if a.without_demo:
        host.EXTRA_MODEL_ROOTS.clear()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        S.configure(a.models_dir or tmp / "models", tmp / "input", tmp / "output", tmp / "temp")
        with S.ServerThread(S.PromptServer(user_dir=tmp / "user")) as url:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            asyncio.run(shoot(url, a.out.resolve(), tmp / "browser"))
    print(a.out)


if __name__ == "__main__":
    main()
