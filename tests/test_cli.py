"""The `qwenimage` command line."""
import pytest
import torch

from qwenimage.cli import main
from qwenimage.qwenimage_core import QwenImageTransformer, preset, save_transformer


def test_selfcheck_passes(capsys):
    assert main(["selfcheck"]) == 0
    assert "self-check passed" in capsys.readouterr().out


def test_inspect_reports_config_and_loads(tmp_path, capsys):
    save_transformer(QwenImageTransformer(preset("tiny")), tmp_path / "transformer")
    assert main(["inspect", str(tmp_path), "--load", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "num_layers: 2" in out and "as torch.bfloat16" in out


def test_inspect_bad_file_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "x.safetensors").write_text("hello")
    assert main(["inspect", str(tmp_path / "x.safetensors")]) == 2
    assert "x.safetensors: not a safetensors file" in capsys.readouterr().err


# ---------------------------------------------------------------------- bad arguments: one line, exit 2, early

class _FakePipe:
    edit_template = None

    def generate(self, prompt, **kw):
        from PIL import Image

        return [Image.new("RGB", (32, 32), (200, 10, 10))]


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if generate gets as far as loading a model."""
    from qwenimage.qwenimage_core import pipeline

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")
    monkeypatch.setattr(pipeline, "load_pipeline", refuse)


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize("args, needle", [
    (["--device", "bogus"], "unknown device 'bogus'"),
    (["--dtype", "bogus"], "unknown dtype 'bogus'"),
    (["--cfg", "inf"], "'inf' is not a finite number"),
    (["--cfg", "nan"], "'nan' is not a finite number"),
    (["--shift", "inf"], "'inf' is not a finite number"),
    (["--shift=-inf"], "not a finite number"),
    (["--strength", "nan"], "not a finite number"),
    (["--steps", "0"], "0 is not positive"),
])
def test_generate_refuses_bad_arguments_before_loading(tmp_path, capsys, no_loading, args, needle):
    with pytest.raises(SystemExit) as e:
        main(["generate", str(tmp_path), "-p", "x", "-o", str(tmp_path / "o.png"), *args])
    assert e.value.code == 2
    _one_line_error(capsys, needle)
    assert not (tmp_path / "o.png").exists()


def test_generate_refuses_an_unwritable_output_before_loading(tmp_path, capsys, no_loading):
    (tmp_path / "afile").write_text("x")
    assert main(["generate", str(tmp_path), "-p", "x", "-o", str(tmp_path / "afile" / "o.png")]) == 2
    _one_line_error(capsys, "afile", "cannot write there")
    (tmp_path / "adir").mkdir()
    assert main(["generate", str(tmp_path), "-p", "x", "-o", str(tmp_path / "adir")]) == 2
    _one_line_error(capsys, "is a folder")


def test_cuda_device_without_a_gpu_is_refused(tmp_path, capsys, no_loading):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit):
        main(["generate", str(tmp_path), "-p", "x", "--device", "cuda"])
    _one_line_error(capsys, "CUDA is not available")


@pytest.mark.parametrize("name, want", [("bf16", (torch.bfloat16, None)), ("fp16", (torch.float16, None)),
                                        ("FP32", (torch.float32, None)), ("bfloat16", (torch.bfloat16, None)),
                                        ("fp8", (torch.bfloat16, torch.float8_e4m3fn))])
def test_one_dtype_parser_takes_the_short_names(name, want):
    from qwenimage.cli import parse_dtype

    assert parse_dtype(name) == want


def test_inspect_load_takes_short_dtype_names(tmp_path, capsys):
    save_transformer(QwenImageTransformer(preset("tiny")), tmp_path / "transformer")
    assert main(["inspect", str(tmp_path), "--load", "--dtype", "bf16"]) == 0
    assert "as torch.bfloat16" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path), "--load", "--dtype", "fp8"]) == 0
    assert "loaded" in capsys.readouterr().out


def test_selfcheck_unknown_preset_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["selfcheck", "--preset", "nonsense"])
    assert e.value.code == 2
    _one_line_error(capsys, "'nonsense'", "tiny")


# ------------------------------------------------------------------------------------------- output PNG mode

def test_generate_writes_pngs_with_the_umask_mode(tmp_path, monkeypatch, capsys):
    import os

    from qwenimage.qwenimage_core import pipeline

    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a, **k: _FakePipe())
    for umask, mode in ((0o022, 0o644), (0o077, 0o600)):
        old = os.umask(umask)
        try:
            out = tmp_path / f"u{umask:o}.png"
            assert main(["generate", str(tmp_path), "-p", "x", "-q", "-o", str(out)]) == 0
        finally:
            os.umask(old)
        assert out.stat().st_mode & 0o777 == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u22.png", "u77.png"]  # no temporary file left


# ----------------------------------------------------------------------------------------------- download

@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """snapshot_download that records where it was asked to write; the models folder in tmp_path."""
    import huggingface_hub

    from qwenimage.nodes import host

    calls = []

    def snapshot_download(repo, revision=None, allow_patterns=None, local_dir=None):
        calls.append(local_dir)
        return local_dir or str(tmp_path / "hub-cache" / repo.replace("/", "--"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setitem(host._state, "models", tmp_path / "models")
    return calls


def test_download_defaults_to_where_the_server_looks(tmp_path, fake_hub, capsys):
    assert main(["download", "qwen-image"]) == 0
    want = tmp_path / "models" / "diffusers" / "Qwen-Image"
    assert fake_hub == [str(want)]
    out, err = capsys.readouterr()
    assert out.strip() == str(want) and "warning" not in err


def test_download_elsewhere_warns(tmp_path, fake_hub, capsys):
    assert main(["download", "qwen-image-edit-2509", "--dir", str(tmp_path / "mine")]) == 0
    assert "warning" in capsys.readouterr().err
    assert main(["download", "qwen-image", "--dir", str(tmp_path / "models" / "diffusers" / "QI")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["download", "qwen-image", "--cache"]) == 0
    assert fake_hub[-1] is None and "warning" in capsys.readouterr().err


def test_download_error_gives_the_current_login_command(monkeypatch):
    import huggingface_hub

    from qwenimage.qwenimage_core.hub import DownloadError, download

    def offline(*a, **k):
        raise OSError("offline")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(DownloadError) as e:
        download("qwen-image")
    assert "`hf auth login`" in str(e.value) and "huggingface-cli" not in str(e.value)


def test_the_servers_save_image_uses_the_umask_mode_too(tmp_path, monkeypatch):
    import os

    from qwenimage.nodes import builtins, host

    monkeypatch.setitem(host._state, "output", tmp_path)
    old = os.umask(0o022)
    try:
        builtins.SaveImage().save_images(torch.rand(1, 16, 16, 3), filename_prefix="m")
    finally:
        os.umask(old)
    (png,) = tmp_path.glob("m_*.png")
    assert png.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [png.name]


def test_inspect_refuses_a_config_the_weights_contradict(tmp_path, capsys):
    import json

    save_transformer(QwenImageTransformer(preset("tiny")), tmp_path / "transformer")
    cfg = json.loads((tmp_path / "transformer" / "config.json").read_text())
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({**cfg, "num_layers": 20000}))
    assert main(["inspect", str(tmp_path)]) == 2
    _one_line_error(capsys, "num_layers = 20000 in the config, but the file has 2")
