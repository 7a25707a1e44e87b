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
