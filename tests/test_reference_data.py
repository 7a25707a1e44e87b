"""The official-release facts shipped with the tests (tests/reference/: configs and key lists, copied from the
project's reference data) and the tokenizer shipped in the package are pinned by hash, so an edit to them shows;
where the reference data lies beside the checkout (../shared, as in CI), they are also checked equal to it."""
import hashlib
import os
import re

from conftest import REFERENCE

from qwenimage.qwenimage_core.text_encoder import bundled_tokenizer_dir

SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                       "reference"))
SHIPPED = {
    "official_configs.json": "430718c7389dbff0ccd197229eb24d2a7f31118fd2961652b63bc12e818c1c81",
    "text_encoder_keys.tsv": "b143bfb548a16ad003cdb9b7847e87b75715476fce92bc500515680112c95cc7",
    "transformer_keys.tsv": "ad54899a94a4d327f914746826a75563f85181c179b40a6ec69abee7003b9126",
    "vae_keys_comfyui_to_diffusers.tsv": "5729d4f58c4b1d62108ff0e0136a2f8f20dd77801721868bbe85503c744f4208",
}
TOKENIZER = ("merges.txt", "tokenizer_config.json", "vocab.json")


def sha256(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def rows(path):
    with open(path, encoding="utf-8") as fh:
        return [line.rstrip("\n").split("\t") for line in fh if line.strip() and not line.startswith("#")]


def test_shipped_reference_data_is_pinned():
    assert sorted(os.listdir(REFERENCE)) == sorted(SHIPPED)
    for name, digest in SHIPPED.items():
        assert sha256(os.path.join(REFERENCE, name)) == digest, name
    tok = bundled_tokenizer_dir()
    assert {"LICENSE", *TOKENIZER} <= set(os.listdir(tok))
    assert "Apache License" in (tok / "LICENSE").read_text(encoding="utf-8")


def test_shipped_copies_equal_the_reference_data_when_beside_the_checkout():
    if not os.path.isdir(SHARED):  # a plain clone: the pins above are all there is to compare with
        assert sha256(os.path.join(REFERENCE, "transformer_keys.tsv")) == SHIPPED["transformer_keys.tsv"]
        return
    for name in SHIPPED:
        assert sha256(os.path.join(SHARED, name)) == sha256(os.path.join(REFERENCE, name)), name
    for name in TOKENIZER:
        assert sha256(os.path.join(SHARED, "qwen25_tokenizer", name)) == sha256(bundled_tokenizer_dir() / name), name
    # the two VAE key lists there are the two halves of the shipped map
    pairs = rows(os.path.join(REFERENCE, "vae_keys_comfyui_to_diffusers.tsv"))
    assert rows(os.path.join(SHARED, "vae_keys_comfyui.tsv")) == [[c, s] for c, _, s in pairs]
    assert sorted(rows(os.path.join(SHARED, "vae_keys_diffusers.tsv"))) == sorted([d, s] for _, d, s in pairs)


def test_no_other_test_reads_the_reference_data_beside_the_checkout():
    """A user's clone has no ../shared: only the cross-check above may look there (CI runs the rest in a clone)."""
    here = os.path.dirname(os.path.abspath(__file__))
    path_like = re.compile(r"""["']shared["']|\.\./shared|[\\/]shared[\\/]""")
    readers = [name for name in sorted(os.listdir(here)) if name.endswith(".py")
               and path_like.search(open(os.path.join(here, name), encoding="utf-8").read())]
    assert readers == [os.path.basename(__file__)]
