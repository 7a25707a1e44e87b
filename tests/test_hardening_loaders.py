"""Hostile checkpoint files (issue 17 items 4 and 7): a config that contradicts the weights is refused before any
model is built, and a damaged safetensors file or bad metadata JSON is a CheckpointError naming the file, for
every loader (transformer, VAE, text encoder, LoRA)."""
import json
import re
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from qwenimage.qwenimage_core import QwenImageTransformer, preset, save_comfyui_transformer, save_transformer
from qwenimage.qwenimage_core import checkpoint as ckpt
from qwenimage.qwenimage_core import text_encoder as te_mod
from qwenimage.qwenimage_core import vae as vae_mod
from qwenimage.qwenimage_core.checkpoint import load_transformer
from qwenimage.qwenimage_core.lora import LoraError, read_lora, save_lora
from qwenimage.qwenimage_core.text_encoder import CONFIG_METADATA_KEY, load_text_encoder_model, save_text_encoder_file
from qwenimage.qwenimage_core.vae import QwenImageVAE, VAEConfig, load_vae, save_vae
from qwenimage.qwenimage_core.weights import CheckpointError


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return QwenImageTransformer(preset("tiny"))


def _tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def _never_built(monkeypatch, module, name):
    def refuse(*a, **k):
        raise AssertionError(f"{name} was built from a config the weights contradict")
    monkeypatch.setattr(module, name, refuse)


# ------------------------------------------------------------------------------------ crafted configs (item 4)

def test_transformer_metadata_config_is_checked_before_building(tmp_path, tiny, monkeypatch):
    cfg = tiny.config.to_dict()
    cfg["num_layers"] = 20000
    path = tmp_path / "crafted.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path), {"config": json.dumps(cfg)})
    _never_built(monkeypatch, ckpt, "QwenImageTransformer")
    with pytest.raises(CheckpointError, match=r"crafted\.safetensors: .*num_layers = 20000 in the config, but the file has 2"):
        load_transformer(path)


def test_transformer_folder_config_is_checked_before_building(tmp_path, tiny, monkeypatch):
    save_transformer(tiny, tmp_path / "transformer")
    cfg = json.loads((tmp_path / "transformer" / "config.json").read_text())
    cfg.update(num_attention_heads=4000)
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(cfg))
    _never_built(monkeypatch, ckpt, "QwenImageTransformer")
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors: .*'img_in\.weight': file has \[32, 64\], config \(num_attention_heads x attention_head_dim = 64000\) needs \[64000, 64\]"):
        load_transformer(tmp_path)


def test_vae_folder_config_is_checked_before_building(tmp_path, monkeypatch):
    save_vae(QwenImageVAE(VAEConfig.tiny()), tmp_path / "vae")
    load_vae(tmp_path)  # the honest folder loads
    cfg = json.loads((tmp_path / "vae" / "config.json").read_text())
    cfg.update(num_res_blocks=20000)
    (tmp_path / "vae" / "config.json").write_text(json.dumps(cfg))
    _never_built(monkeypatch, vae_mod, "QwenImageVAE")
    with pytest.raises(CheckpointError, match=r"num_res_blocks \+ 1 = 20001 in the config, but the file has 2"):
        load_vae(tmp_path)


def test_text_encoder_metadata_config_is_checked_before_building(tmp_path, monkeypatch):
    from _tiny import tiny_text_encoder

    good = tmp_path / "te.safetensors"
    save_text_encoder_file(tiny_text_encoder(512), good)
    tensors, meta = _tensors(good)
    cfg = json.loads(meta[CONFIG_METADATA_KEY])
    cfg["text_config"]["num_hidden_layers"] = 20000
    cfg["text_config"].pop("layer_types", None)
    save_file(tensors, str(tmp_path / "crafted.safetensors"), {CONFIG_METADATA_KEY: json.dumps(cfg)})
    _never_built(monkeypatch, te_mod, "_build_empty_model")
    with pytest.raises(CheckpointError, match=r"crafted\.safetensors: .*num_hidden_layers = 20000 in the config, but the file has 2"):
        load_text_encoder_model(tmp_path / "crafted.safetensors")
    save_file(tensors, str(tmp_path / "badjson.safetensors"), {CONFIG_METADATA_KEY: "{oops"})
    with pytest.raises(CheckpointError, match=r"badjson\.safetensors: metadata"):
        load_text_encoder_model(tmp_path / "badjson.safetensors")


@pytest.mark.parametrize("peft", [{"r": 0, "lora_alpha": 4}, {"r": 4, "lora_alpha": float("inf")},
                                  {"r": 4, "lora_alpha": 4, "rank_pattern": {"to_q": float("nan")}}])
def test_lora_metadata_numbers_are_checked(tmp_path, peft):
    path = tmp_path / "l.safetensors"
    save_lora(path, {"transformer_blocks.0.attn.to_q": (torch.randn(4, 32), torch.randn(32, 4), 4.0)})
    tensors, _ = _tensors(path)
    save_file(tensors, str(path), {"lora_adapter_metadata": json.dumps(peft)})
    with pytest.raises(LoraError, match=r"l\.safetensors: metadata 'lora_adapter_metadata': .*not a usable number"):
        read_lora(path)


def test_bad_metadata_json_names_the_file(tmp_path, tiny):
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path), {"config": "{not json"})
    with pytest.raises(CheckpointError, match=r"m\.safetensors: metadata 'config' is not valid JSON"):
        load_transformer(path)


# --------------------------------------------------------------------------------- damaged files (item 7)

def _rewrite_header(src, dst, change):
    raw = open(src, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    open(dst, "wb").write(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def _first_key(header):
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])[0]


def _overlap(header):
    """The last tensor moved to byte 0, on top of the first (its length kept)."""
    keys = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    start, end = header[keys[-1]]["data_offsets"]
    header[keys[-1]]["data_offsets"] = [0, end - start]


DAMAGE = {
    "unknown dtype": (lambda h: h[_first_key(h)].update(dtype="Q4"), r"dtype 'Q4'"),
    "overlapping offsets": (_overlap, r"inconsistent offsets"),
    "size mismatch": (lambda h: h[_first_key(h)].update(shape=[1, 1, 1, 1, 3]), r"do not hold"),
    "metadata not strings": (lambda h: h.update(__metadata__={"format": 5}), r"__metadata__"),
}


def _loaders(tmp_path, tiny):
    """(name, good file, loader) for each component."""
    from _tiny import tiny_text_encoder

    out = []
    save_comfyui_transformer(tiny, tmp_path / "dit.safetensors")
    out.append(("transformer", tmp_path / "dit.safetensors", load_transformer))
    vae = QwenImageVAE(VAEConfig.tiny())
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp_path / "vae.safetensors"))
    out.append(("vae", tmp_path / "vae.safetensors", load_vae))
    save_text_encoder_file(tiny_text_encoder(512), tmp_path / "te.safetensors")
    out.append(("text encoder", tmp_path / "te.safetensors", load_text_encoder_model))
    save_lora(tmp_path / "lora.safetensors", {"transformer_blocks.0.attn.to_q": (torch.randn(4, 32),
                                                                                 torch.randn(32, 4), 4.0)})
    out.append(("lora", tmp_path / "lora.safetensors", read_lora))
    return out


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_safetensors_are_named_errors_for_every_loader(tmp_path, tiny, damage):
    change, pattern = DAMAGE[damage]
    for name, good, load in _loaders(tmp_path, tiny):
        bad = good.with_name("bad_" + good.name)
        _rewrite_header(good, bad, change)
        with pytest.raises(CheckpointError if name != "lora" else LoraError) as e:
            load(bad)
        assert str(bad) in str(e.value), (name, str(e.value))
        assert e.type.__module__.startswith("qwenimage"), (name, e.type)
        assert re.search(pattern, str(e.value)), (name, str(e.value))


def test_trailing_bytes_are_a_named_error(tmp_path, tiny):
    save_comfyui_transformer(tiny, tmp_path / "dit.safetensors")
    with open(tmp_path / "dit.safetensors", "ab") as fh:
        fh.write(b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"dit\.safetensors: 16 data bytes after the last tensor"):
        load_transformer(tmp_path / "dit.safetensors")


def test_a_tensor_read_error_names_the_file(tmp_path, tiny, monkeypatch):
    """Whatever safetensors refuses at read time reaches the caller as a CheckpointError naming file and key."""
    from safetensors import SafetensorError

    from qwenimage.qwenimage_core import weights

    class Broken:
        def get_tensor(self, key):
            raise SafetensorError("simulated")

    save_comfyui_transformer(tiny, tmp_path / "dit.safetensors")
    monkeypatch.setattr(weights, "safe_open", lambda *a, **k: Broken())
    with pytest.raises(CheckpointError, match=r"dit\.safetensors: cannot read tensor .*simulated"):
        load_transformer(tmp_path / "dit.safetensors")


def test_a_full_disk_while_writing_weights_names_the_file(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    from qwenimage.qwenimage_core.weights import save_file_atomic

    def full(tensors, path, metadata=None):
        open(path, "wb").write(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError, match=r"w\.safetensors: could not write .*No space left"):
        save_file_atomic({"a": torch.zeros(2)}, tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_saved_files_are_byte_identical(tmp_path):
    """safetensors orders the header's metadata by a randomly seeded hash map: without the sorted rewrite, two
    writes of the same tensors and metadata differ in bytes about half the time (the demo build's hash check
    failed on CI that way)."""
    import hashlib

    from safetensors import safe_open

    from qwenimage.qwenimage_core.weights import save_file_atomic

    tensors = {"b": torch.arange(5.0), "a": torch.ones(2, 3, dtype=torch.bfloat16), "i": torch.tensor([1, 2])}
    meta = {"format": "pt", "config": '{"name": "d\u00e9mo/1"}', "zeta": "1", "alpha": "2", "mid": "3"}
    digests = set()
    for i in range(12):
        save_file_atomic(tensors, tmp_path / f"{i}.safetensors", meta)
        digests.add(hashlib.sha256((tmp_path / f"{i}.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
    with safe_open(tmp_path / "0.safetensors", "pt") as f:
        assert f.metadata() == meta
        assert all(torch.equal(f.get_tensor(k), v) for k, v in tensors.items())


def test_vae_latent_statistics_in_a_single_file_round_trip_and_bad_ones_are_named(tmp_path):
    """A VAE trained from scratch keeps its own latent statistics in the single file's metadata; malformed ones
    are refused with the file named."""
    import dataclasses
    import json

    import safetensors.torch
    from safetensors import safe_open

    from qwenimage.qwenimage_core.vae import LATENT_STATS_KEY, QwenImageVAE, VAEConfig, load_vae, save_comfyui_vae
    from qwenimage.qwenimage_core.weights import CheckpointError

    cfg = dataclasses.replace(VAEConfig.tiny(), latents_mean=tuple(0.1 * i for i in range(16)),
                              latents_std=tuple(1.0 + i for i in range(16)))
    save_comfyui_vae(QwenImageVAE(cfg), tmp_path / "v.safetensors")
    assert load_vae(tmp_path / "v.safetensors").config == cfg
    save_comfyui_vae(QwenImageVAE(VAEConfig.tiny()), tmp_path / "o.safetensors")  # official: nothing added
    with safe_open(tmp_path / "o.safetensors", "pt") as f:
        assert LATENT_STATS_KEY not in (f.metadata() or {})
    tensors = safetensors.torch.load_file(tmp_path / "v.safetensors")
    safetensors.torch.save_file(tensors, tmp_path / "bad.safetensors", {LATENT_STATS_KEY: json.dumps({"mean": [0]})})
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: .*qwenimage_latent_stats"):
        load_vae(tmp_path / "bad.safetensors")



def test_write_atomic_leaves_the_old_file_and_no_temporary_when_a_write_fails(tmp_path, monkeypatch):
    """The one atomic writer (curation shards and manifests, evaluation rows and reports, the server's user files):
    text or bytes land whole with the usual mode; a write that fails midway keeps the previous file intact."""
    import os

    from qwenimage.qwenimage_core.images import write_atomic

    path = tmp_path / "sub" / "manifest.jsonl"
    write_atomic(path, "first 第一\n")
    assert path.read_text(encoding="utf-8") == "first 第一\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "second")
    assert path.read_bytes() == b"\x00\x01" and os.listdir(path.parent) == ["manifest.jsonl"]


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------- block counts and model size (issue 23 item 5)

def _no_big_build(monkeypatch, most: int = 2):
    """Let the loader build models of at most `most` blocks (the size check builds one on the meta device)."""
    real = ckpt.QwenImageTransformer

    def guarded(config):
        assert config.num_layers <= most, f"a model of {config.num_layers} blocks was built"
        return real(config)
    monkeypatch.setattr(ckpt, "QwenImageTransformer", guarded)


def test_a_stray_block_index_is_a_gap_not_20000_blocks(tmp_path, tiny, monkeypatch):
    """No config: the block count was the highest index + 1, so one key `transformer_blocks.19999...` built
    20,000 blocks (16 s in `inspect --load`, the server's worker blocked) before failing on missing keys."""
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    sd["transformer_blocks.19999.attn.norm_q.weight"] = torch.ones(16)
    save_file(sd, str(tmp_path / "gap.safetensors"))
    _no_big_build(monkeypatch)
    with pytest.raises(CheckpointError, match=r"gap\.safetensors: numbered blocks with gaps: 3 present among "
                                              r"transformer_blocks\.0\.\.19999, missing transformer_blocks\.2\.\.19998"):
        load_transformer(tmp_path / "gap.safetensors")


@pytest.mark.parametrize("with_config", [False, True])
def test_a_model_far_larger_than_the_file_is_refused_before_building(tmp_path, tiny, monkeypatch, with_config):
    """3,000 contiguous stub blocks (one 16-value norm each): the config, inferred or from the metadata, agrees
    with the count, but the model it describes is ~800 times the weights the file holds."""
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    sd.update({f"transformer_blocks.{i}.attn.norm_q.weight": torch.ones(16) for i in range(2, 3000)})
    meta = {"config": json.dumps({**tiny.config.to_dict(), "num_layers": 3000})} if with_config else None
    save_file(sd, str(tmp_path / "stubs.safetensors"), meta)
    _no_big_build(monkeypatch)
    with pytest.raises(CheckpointError, match=r"stubs\.safetensors: the transformer config describes at least [\d,]+ "
                                              r"parameters, but the file holds only [\d,]+ weight values"):
        load_transformer(tmp_path / "stubs.safetensors")


def test_a_text_encoder_of_stub_layers_is_refused_before_building(tmp_path, monkeypatch):
    """transformers builds about 6 Qwen2.5-VL layers a second even on the meta device: 5,000 stub layers (one
    norm each) with a config to match would take most of an hour to fail."""
    from _tiny import tiny_text_encoder

    save_text_encoder_file(tiny_text_encoder(512), tmp_path / "te.safetensors")
    tensors, meta = _tensors(tmp_path / "te.safetensors")
    cfg = json.loads(meta[CONFIG_METADATA_KEY])
    cfg["text_config"]["num_hidden_layers"] = 5000
    cfg["text_config"].pop("layer_types", None)
    norm = next(k for k in tensors if k.endswith("layers.0.input_layernorm.weight"))
    tensors.update({norm.replace(".0.", f".{i}."): tensors[norm].clone() for i in range(2, 5000)})
    save_file(tensors, str(tmp_path / "stubs.safetensors"), {CONFIG_METADATA_KEY: json.dumps(cfg)})
    _never_built(monkeypatch, te_mod, "_build_empty_model")
    with pytest.raises(CheckpointError, match=r"stubs\.safetensors: the text encoder config describes at least "
                                              r"[\d,]+ parameters, but the file holds only [\d,]+ weight values"):
        load_text_encoder_model(tmp_path / "stubs.safetensors")


def test_inspect_load_refuses_a_stub_file_in_one_line(tmp_path, tiny, capsys, monkeypatch):
    from qwenimage.cli import main

    sd = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    sd["transformer_blocks.19999.attn.norm_q.weight"] = torch.ones(16)
    save_file(sd, str(tmp_path / "gap.safetensors"))
    _no_big_build(monkeypatch)
    assert main(["inspect", str(tmp_path / "gap.safetensors"), "--load"]) == 2
    err = capsys.readouterr().err.strip()
    assert "gap.safetensors: numbered blocks with gaps" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_the_node_loader_names_the_stub_file(tmp_path, tiny, monkeypatch):
    """The server's loader is the core's: the same fast, named refusal reaches the node's caller."""
    from qwenimage.nodes import loaders

    sd = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    sd["transformer_blocks.19999.attn.norm_q.weight"] = torch.ones(16)
    save_file(sd, str(tmp_path / "gap.safetensors"))
    _no_big_build(monkeypatch)
    with pytest.raises(CheckpointError, match=r"gap\.safetensors: numbered blocks with gaps"):
        loaders._load_model("model:gap-test", str(tmp_path / "gap.safetensors"), "default")


# -------------------------------------------------------- nested JSON and mistyped configs (issue 23 item 10)

DEEP = "[" * 100_000 + "]" * 100_000


def test_a_deeply_nested_safetensors_header_is_a_named_error(tmp_path):
    header = ('{"__metadata__": {"x": "y"}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "n": '
              + DEEP + '}}').encode()
    (tmp_path / "deep.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(CheckpointError, match=r"deep\.safetensors: the safetensors header is nested deeper than 64"):
        load_transformer(tmp_path / "deep.safetensors")
    with pytest.raises(LoraError, match=r"deep\.safetensors: the safetensors header is nested deeper"):
        read_lora(tmp_path / "deep.safetensors")


@pytest.mark.parametrize("depth", [100_000, 500])  # the parser's RecursionError, and what it parses but is absurd
def test_deeply_nested_metadata_is_a_named_error_for_every_loader(tmp_path, tiny, depth):
    from _tiny import tiny_text_encoder

    deep = "[" * depth + "]" * depth
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    save_file(sd, str(tmp_path / "dit.safetensors"), {"config": deep})
    with pytest.raises(CheckpointError, match=r"dit\.safetensors: metadata 'config' is nested deeper than 64"):
        load_transformer(tmp_path / "dit.safetensors")
    save_text_encoder_file(tiny_text_encoder(512), tmp_path / "te0.safetensors")
    tensors, _ = _tensors(tmp_path / "te0.safetensors")
    save_file(tensors, str(tmp_path / "te.safetensors"), {CONFIG_METADATA_KEY: deep})
    with pytest.raises(CheckpointError, match=rf"te\.safetensors: metadata '{CONFIG_METADATA_KEY}' is nested deeper"):
        load_text_encoder_model(tmp_path / "te.safetensors")
    save_lora(tmp_path / "l0.safetensors", {"transformer_blocks.0.attn.to_q": (torch.randn(4, 32), torch.randn(32, 4))})
    tensors, _ = _tensors(tmp_path / "l0.safetensors")
    save_file(tensors, str(tmp_path / "l.safetensors"), {"lora_adapter_metadata": '{"r": 4, "x": ' + deep + "}"})
    with pytest.raises(LoraError, match=r"l\.safetensors: metadata 'lora_adapter_metadata': it is nested deeper"):
        read_lora(tmp_path / "l.safetensors")


def test_a_deeply_nested_config_json_is_a_named_error(tmp_path, tiny):
    save_transformer(tiny, tmp_path / "transformer")
    (tmp_path / "transformer" / "config.json").write_text('{"num_layers": ' + DEEP + "}")
    with pytest.raises(CheckpointError, match=r"config\.json: JSON is nested deeper than 64"):
        load_transformer(tmp_path)


@pytest.mark.parametrize("field,value", [("num_layers", "20000"), ("num_attention_heads", 2.5),
                                         ("zero_cond_t", "yes"), ("axes_dims_rope", [4, 6, None])])
def test_a_mistyped_transformer_config_names_the_field_and_file(tmp_path, tiny, field, value):
    """"num_layers": "20000" was a TypeError traceback (str > int in the count check)."""
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    save_file(sd, str(tmp_path / "t.safetensors"), {"config": json.dumps({**tiny.config.to_dict(), field: value})})
    with pytest.raises(CheckpointError, match=rf"t\.safetensors: config field '{field}' = .* must be"):
        load_transformer(tmp_path / "t.safetensors")
    save_transformer(tiny, tmp_path / "transformer")
    cfg = json.loads((tmp_path / "transformer" / "config.json").read_text())
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({**cfg, field: value}))
    with pytest.raises(CheckpointError, match=rf"config\.json: config field '{field}' = .* must be"):
        load_transformer(tmp_path)


@pytest.mark.parametrize("field,value", [("num_res_blocks", "20000"), ("base_dim", 8.0), ("dim_mult", 4)])
def test_a_mistyped_vae_config_names_the_field_and_file(tmp_path, field, value):
    """"num_res_blocks": "20000" was a TypeError traceback (str + int in the count check)."""
    save_vae(QwenImageVAE(VAEConfig.tiny()), tmp_path / "vae")
    cfg = json.loads((tmp_path / "vae" / "config.json").read_text())
    (tmp_path / "vae" / "config.json").write_text(json.dumps({**cfg, field: value}))
    with pytest.raises(CheckpointError, match=rf"config\.json: config field '{field}' = .* must be"):
        load_vae(tmp_path)


def test_a_count_or_size_that_is_not_an_integer_is_named_by_the_shared_check(tmp_path):
    """The VAE and text encoder configs reach the same check (weights.check_config_fits): a string count was a
    TypeError there (str > int)."""
    from qwenimage.qwenimage_core.weights import SafetensorsFile, check_config_fits

    save_file({"decoder.up_blocks.0.w": torch.ones(2)}, str(tmp_path / "v.safetensors"))
    f = SafetensorsFile(tmp_path / "v.safetensors")
    with pytest.raises(CheckpointError, match=r"v\.safetensors: the VAE config is not usable: len\(dim_mult\) = '4' "
                                              r"in the config is not an integer"):
        check_config_fits("VAE", {"decoder.up_blocks.0.w": (f, "decoder.up_blocks.0.w")},
                          counts=[("decoder.up_blocks.", "len(dim_mult)", "4")])
