"""A newcomer's first image: from `git clone` to the demo workflow's PNG, as the README's first command does it.

    python bench/bench_first_image.py                  # clones this checkout into a temporary folder

Times each part: the clone; `bash scripts/run.sh` until the server answers (it makes .venv/ and installs the
package: the slow part on a fresh machine); queueing the demo workflow (the graph a fresh browser opens on) over
HTTP, as pressing Run does, until its PNG is in /history. Nothing of the user's is touched: the clone, its
environment and its server live in the temporary folder, and the server is stopped at the end."""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def wait_for(url: str, proc, limit: float):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} before answering")
        try:
            return get(url)
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"no answer from {url} within {limit:.0f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=ROOT, help="what to clone (default: this checkout)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--installed", action="store_true",
                    help="no clone or set-up: a cold start of `qwenimage serve` from this checkout with this "
                         "Python (the first image after a restart)")
    ap.add_argument("--wait", type=float, default=0.0,
                    help="seconds between the server answering and Run (a user opening the page first)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="first-image-")
    clone, port = os.path.join(work, "qwenimage"), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON")}
    times, proc = {}, None
    try:
        t0 = time.monotonic()
        log = open(os.path.join(work, "server.log"), "w")
        if args.installed:
            clone = ROOT
            cmd = [sys.executable, "-m", "qwenimage.cli", "serve", "--models-dir", os.path.join(work, "models"),
                   "--output-dir", os.path.join(work, "output"), "--input-dir", os.path.join(work, "input"),
                   "--temp-dir", os.path.join(work, "temp"), "--user-dir", os.path.join(work, "user")]
            env = os.environ
        else:
            subprocess.run(["git", "clone", "-q", args.repo, clone], check=True)
            times["clone"] = time.monotonic() - t0
            cmd = ["bash", "scripts/run.sh", "serve", "--models-dir", "models"]
        t = time.monotonic()
        proc = subprocess.Popen(cmd + ["--port", str(port)], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/api/system_stats", proc, 1800)
        times["server start" if args.installed else "set-up and server start"] = time.monotonic() - t
        time.sleep(args.wait)
        t = time.monotonic()
        with open(os.path.join(clone, "workflows", "api", "demo.json"), encoding="utf-8") as fh:
            prompt = json.load(fh)
        req = urllib.request.Request(base + "/api/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            pid = json.loads(r.read())["prompt_id"]
        while True:
            h = get(f"{base}/api/history/{pid}").get(pid)
            if h and h.get("status", {}).get("completed"):
                break
            if h and h.get("status", {}).get("status_str") == "error":
                raise SystemExit(f"the demo workflow failed: {h['status']}")
            time.sleep(0.2)
        images = [im for out in h["outputs"].values() for im in out.get("images", [])]
        assert images, "the demo workflow gave no image"
        times["first image (load the demo model, sample, decode, save)"] = time.monotonic() - t
        times["total"] = time.monotonic() - t0
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    flags = (" --installed" if args.installed else "") + (f" --wait {args.wait:g}" if args.wait else "")
    print(f"machine: {os.cpu_count()} cores ({sys.platform}); command: python bench/bench_first_image.py{flags}")
    for k, v in times.items():
        print(f"{k:58s} {v:7.1f} s")


if __name__ == "__main__":
    main()
