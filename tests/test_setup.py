"""scripts/setup.sh, which run.sh and test.sh call, in a throwaway environment whose `pip` only records what it is
asked (a venv over this python's packages, with a fake pip module first on its path): install once, again only
when the stamp is stale, torch's build chosen by GPU and by whether PyTorch's CPU index answers, and a clear word
when no venv can be made. Also the conftest hook CI relies on: QWENIMAGE_NO_SKIPS=1 fails a run on a skip."""
import functools
import http.server
import os
import shutil
import site as site_module
import subprocess
import sys
import threading
import time
import types

import conftest

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = os.path.join(REPO, "scripts", "setup.sh")
FAKE_PIP = "import json, os, sys\nwith open(os.environ['PIP_LOG'], 'a') as f:\n    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"


@pytest.fixture
def env(tmp_path):
    """A venv over the running environment's packages (so `qwenimage` is this checkout) with a recording pip."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "outer.pth"), "w") as f:  # this environment's packages, after its own
        f.write(f"import site; list(map(site.addsitedir, {site_module.getsitepackages()!r}))\n")
    os.makedirs(os.path.join(site, "pip"))
    open(os.path.join(site, "pip", "__init__.py"), "w").close()
    with open(os.path.join(site, "pip", "__main__.py"), "w") as f:
        f.write(FAKE_PIP)
    bin_dir = tmp_path / "bin"  # first on PATH: an nvidia-smi that finds no GPU, whatever this machine has
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'No devices were found' >&2\nexit 6\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    e = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON", "TORCH_VERSION")}
    e.update(PYTHON=str(venv / "bin" / "python"), PIP_LOG=str(tmp_path / "pip.log"),
             PATH=f"{bin_dir}:/usr/bin:/bin", TORCH_CPU_INDEX="http://127.0.0.1:9/whl/cpu")  # port 9: nothing there
    return dict(venv=venv, site=site, bin=bin_dir, env=e, log=tmp_path / "pip.log")


def setup(env, *args, **extra):
    r = subprocess.run(["bash", SETUP, *args], env={**env["env"], **extra}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    calls = env["log"].read_text().splitlines() if env["log"].exists() else []
    env["log"].unlink(missing_ok=True)
    return calls, r.stderr


def test_installs_once_and_again_only_when_the_stamp_is_stale(env):
    calls, _ = setup(env, "test")
    assert calls == [f'["install", "-q", "-e", "{REPO}[test]"]']  # torch is there already: not touched
    stamp = env["venv"] / ".qwenimage-setup-test"
    assert stamp.exists()
    assert setup(env, "test")[0] == []
    assert setup(env)[0] == []  # the base install is part of any extra's
    stamp.write_text("stale\n")  # as when pyproject.toml changes
    assert setup(env, "test")[0] == [f'["install", "-q", "-e", "{REPO}[test]"]']


def test_torch_build_by_gpu_and_cpu_index(env):
    with open(os.path.join(env["site"], "torch.py"), "w") as f:  # no torch in this environment
        f.write("raise ImportError('no torch')\n")
    t = time.monotonic()
    calls, err = setup(env)
    assert time.monotonic() - t < 30  # an unreachable CPU index costs seconds, not pip's minutes of retries
    assert calls[0] == '["install", "-q", "torch==2.13.0"]' and "does not answer" in err

    root = env["venv"].parent / "site"  # PyTorch's CPU index, answering
    (root / "whl" / "cpu" / "torch").mkdir(parents=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        index = f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
        os.remove(env["venv"] / ".qwenimage-setup")
        calls, err = setup(env, TORCH_CPU_INDEX=index, TORCH_VERSION="2.9.1")
    finally:
        server.shutdown()
        server.server_close()
    assert calls[0] == f'["install", "-q", "--index-url", "{index}", "torch==2.9.1"]' and "CPU build" in err

    smi = env["bin"] / "nvidia-smi"  # now one that lists a GPU
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    os.remove(env["venv"] / ".qwenimage-setup")
    calls, err = setup(env)
    assert calls[0] == '["install", "-q", "torch==2.13.0"]' and "NVIDIA GPU found" in err


def test_no_venv_module_says_what_to_install(tmp_path):
    root = tmp_path / "repo"
    os.makedirs(root / "scripts")
    shutil.copy(SETUP, root / "scripts")
    bin_dir = tmp_path / "bin"  # a python without venv/ensurepip (as Debian's before python3-venv), no virtualenv
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(f'#!/bin/bash\ncase "$*" in *ensurepip*) exit 1;; esac\nexec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    for tool in ("dirname", "rm", "cat"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    e = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON")}
    r = subprocess.run(["/bin/bash", str(root / "scripts" / "setup.sh")], env={**e, "PATH": str(bin_dir)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "apt-get install python3-venv" in r.stderr and "PYTHON=" in r.stderr
    assert not (root / ".venv").exists()  # nothing half-made left behind


def test_no_skips_hook(tmp_path):
    """With QWENIMAGE_NO_SKIPS=1, a skip fails the run (test or module), except in the browser test."""
    tests = tmp_path / "tests"
    tests.mkdir()
    shutil.copy(os.path.join(REPO, "tests", "conftest.py"), tests)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tests / "test_browser.py").write_text("import pytest\npytestmark = pytest.mark.skip(reason='no chromium')\n"
                                           "def test_page():\n    pass\n")
    (tests / "test_a.py").write_text("import pytest\ndef test_x():\n    pytest.skip('no data')\n")
    (tests / "test_b.py").write_text("import pytest\npytest.importorskip('no_such_module_here')\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=tmp_path,
                       env={**os.environ, "QWENIMAGE_NO_SKIPS": "1"}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout
    listed = r.stdout.split("skips not allowed")[1]
    assert "tests/test_a.py::test_x: Skipped: no data" in listed and "tests/test_b.py: Skipped" in listed
    assert "test_browser" not in listed
    # the same skips without the variable, and the browser's alone with it, pass (checked on the hook's filter)
    report = lambda nodeid: types.SimpleNamespace(nodeid=nodeid)  # noqa: E731
    assert conftest.unexpected_skips({"skipped": [report("tests/test_browser.py::test_page")]}) == []
    assert conftest.unexpected_skips({"passed": [report("tests/test_a.py::test_y")]}) == []


def test_every_package_folder_and_data_file_is_in_the_install():
    """A folder with an __init__.py that pyproject's `packages` leaves out installs as nothing (an editable
    install hides that; a wheel does not): every one is listed, and every preset, template and corpus file a
    package reads is covered by its package-data globs."""
    import fnmatch
    import tomllib

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(repo, "pyproject.toml"), "rb") as fh:
        tool = tomllib.load(fh)["tool"]["setuptools"]
    listed = set(tool["packages"])
    for folder in ("qwenimage_core", "nodes", "training"):
        for root, dirs, files in os.walk(os.path.join(repo, folder)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            if "__init__.py" in files:
                name = "qwenimage." + os.path.relpath(root, repo).replace(os.sep, ".")
                assert name in listed, f"{name} is not in pyproject's [tool.setuptools] packages"
    for package, globs in tool["package-data"].items():
        base = os.path.join(repo, *package.split(".")[1:])
        for pattern in globs:
            assert any(fnmatch.fnmatch(os.path.relpath(os.path.join(r, f), base), pattern)
                       for r, _, fs in os.walk(base) for f in fs), f"{package}: {pattern} matches no file"
    for data in ("training/data/curation/presets", "training/data/synthesis/templates"):
        for f in os.listdir(os.path.join(repo, data)):
            assert any(fnmatch.fnmatch(f"{os.path.basename(data)}/{f}", g) for g in
                       tool["package-data"]["qwenimage." + os.path.dirname(data).replace("/", ".")]), f
