"""How fast hostile inputs are refused or bounded (issue 23 items 5 and 7): a checkpoint of stub blocks, and a
100,000-character prompt through the text encoder.

    python bench/bench_hostile_inputs.py [--loaders-only]

Rows: `load_transformer` on the tiny transformer plus one key `transformer_blocks.19999.attn.norm_q.weight`
(the block count was the highest index + 1, so it built 20,000 blocks before failing), and on 3,000 contiguous
stub blocks (one 16-value norm each); then `QwenTextEncoder.encode` of a 100,000-character prompt with every
template, on a tiny random Qwen2.5-VL (hidden 64, 2 layers) and the real tokenizer, so the figure is the cost of
the cap itself (tokenizing a window, then 1,024 tokens) rather than of a 7B model."""
import os
import sys
import tempfile
import time

import torch

from _common import command, machine


def _time(fn):
    t = time.perf_counter()
    try:
        fn()
        outcome = "loaded"
    except Exception as e:  # the refusal is the point: report its first words
        outcome = f"{type(e).__name__}: {str(e).split(': ', 1)[-1][:60]}..."
    return time.perf_counter() - t, outcome


def stub_files(work):
    from safetensors.torch import save_file

    from qwenimage.qwenimage_core import QwenImageTransformer, preset

    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in QwenImageTransformer(preset("tiny")).state_dict().items()}
    gap = {**sd, "transformer_blocks.19999.attn.norm_q.weight": torch.ones(16)}
    stubs = {**sd, **{f"transformer_blocks.{i}.attn.norm_q.weight": torch.ones(16) for i in range(2, 3000)}}
    out = []
    for name, tensors in (("one key at block 19999", gap), ("3,000 stub blocks", stubs)):
        path = os.path.join(work, name.replace(" ", "_").replace(",", "") + ".safetensors")
        save_file(tensors, path)
        out.append((name, path))
    return out


def tiny_encoder():
    import transformers

    from qwenimage.qwenimage_core.text_encoder import QwenTextEncoder, bundled_tokenizer_dir

    tok = transformers.AutoTokenizer.from_pretrained(str(bundled_tokenizer_dir()))
    cfg = transformers.Qwen2_5_VLConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tok), rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6}),
        vision_config=dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=2,
                           fullatt_block_indexes=[1]))
    torch.manual_seed(0)
    return QwenTextEncoder(transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval(), tok)


def main():
    import argparse

    from PIL import Image

    from qwenimage.qwenimage_core.checkpoint import load_transformer

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--loaders-only", action="store_true", help="skip the prompt rows (an uncapped encoder of "
                    "~25,000 tokens needs tens of GB for attention)")
    a = ap.parse_args()
    print(f"`{command()}` on {machine()}\n")
    print("| input | time | outcome |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for name, path in stub_files(work):
            seconds, outcome = _time(lambda: load_transformer(path))
            print(f"| transformer file, {name} | {seconds:.2f} s | {outcome} |")
    if a.loaders_only:
        return
    from qwenimage.qwenimage_core import text_encoder as te

    te.log.setLevel("ERROR")  # the cap's warning, once per encode
    enc = tiny_encoder()
    prompt = ("A red fox jumps over the lazy dog near the river, 在河边. " * 2000)[:100_000]
    image = Image.new("RGB", (256, 256), (120, 80, 40))
    seconds, _ = _time(lambda: te.cap_prompt(enc.tokenizer, prompt))
    print(f"| 100,000-character prompt, `cap_prompt` alone | {seconds:.2f} s | cut to 1,024 tokens |")
    for template, images in (("t2i", None), ("edit", image), ("edit_plus", [image])):
        with torch.no_grad():
            seconds, _ = _time(lambda: enc.encode([prompt], images=images, template=template))
            tokens = enc.encode([prompt], images=images, template=template)[0].shape[1]
        print(f"| 100,000-character prompt, template {template} | {seconds:.2f} s | {tokens} tokens out |")


if __name__ == "__main__":
    sys.exit(main())
