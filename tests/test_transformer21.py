"""The Qwen-Image 2.1 DiT against the reference (diffusers.QwenImage21Transformer2DModel, 0.42.1): structure, and
float32 parity on a tiny random config for text-to-image, references (also adjacent), a right-padded batch with
per-sample timesteps, and the prefix KV cache."""
import pytest
import torch
from _util import rel_err

from qwenimage.qwenimage_core.positions21 import build_layout
from qwenimage.qwenimage_core.transformer21 import PRESETS21, QwenImage21Transformer

diffusers = pytest.importorskip("diffusers")
TOL = 1e-5
CFG = PRESETS21["tiny"]


@pytest.fixture(scope="module")
def pair():
    """The reference with non-trivial random weights, and ours holding the same."""
    torch.manual_seed(0)
    ref = diffusers.QwenImage21Transformer2DModel(**{k: v for k, v in CFG.to_dict().items() if k != "_class_name"})
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    ours = QwenImage21Transformer(CFG)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval(), ours.eval()


def inputs(batch, slots, target, refs=(), pad=(), seed=1):
    """Random inputs: `slots` the prompt's VLM slots (True = a reference's image slot), (h, w) of the target and
    of each reference in latent tokens, `pad[i]` right-padding tokens of sample i."""
    g = torch.Generator().manual_seed(seed)
    n = sum(h * w for h, w in refs) + target[0] * target[1]
    mask = torch.ones(batch, len(slots), dtype=torch.bool)
    for i, p in enumerate(pad):
        mask[i, len(slots) - p:] = False
    return dict(hidden_states=torch.randn(batch, n, CFG.in_channels, generator=g),
                encoder_hidden_states=torch.randn(batch, len(slots), CFG.context_in_dim, generator=g),
                encoder_hidden_states_mask=mask if pad else None,
                img_shapes=[[*[(1, h, w) for h, w in refs], (1, *target)]] * batch,
                img_mask=torch.tensor(slots + [True] * (target[0] * target[1] // 4)).expand(batch, -1))


TEXT = [False] * 7
TWO_REFS = [False] * 3 + [True] * 4 + [False] * 2 + [True] * 6 + [False] * 3
ADJACENT = [False] * 3 + [True] * 4 + [True] * 6 + [False] * 3
CASES = {
    "text_to_image": (inputs(1, TEXT, (4, 6)), [0.7]),
    "two_references": (inputs(1, TWO_REFS, (4, 4), refs=[(4, 4), (4, 6)]), [0.4]),
    "adjacent_references": (inputs(1, ADJACENT, (4, 4), refs=[(4, 4), (4, 6)]), [0.4]),
    "padded_batch_per_sample_t": (inputs(2, [False] * 9, (4, 6), pad=[0, 3]), [0.3, 0.8]),
    "reference_padded_batch": (inputs(2, [False] * 3 + [True] * 4 + [False] * 5, (4, 4), refs=[(4, 4)], pad=[0, 2]),
                               [0.3, 0.8]),
}


def test_official_config_has_the_reference_keys_and_shapes():
    kw = {k: v for k, v in PRESETS21["qwen-image-2.1"].to_dict().items() if k != "_class_name"}
    with torch.device("meta"):
        ref = diffusers.QwenImage21Transformer2DModel(**kw)
        ours = QwenImage21Transformer(PRESETS21["qwen-image-2.1"])
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert len(shapes) == 297 and all(k.endswith(".weight") for k in shapes)
    assert round(sum(p.numel() for p in ours.parameters()) / 1e9, 3) == 7.115


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(pair, case):
    ref, ours = pair
    kw, t = CASES[case]
    t = torch.tensor(t)
    with torch.no_grad():
        want = ref(**kw, timestep=t, return_dict=False)[0]
        got = ours(**kw, timestep=t)
    assert got.shape == want.shape
    assert rel_err(got, want) <= TOL


@pytest.mark.parametrize("cache_device", [None, "cpu"])
def test_cached_steps_equal_the_full_forward(pair, cache_device):
    """The first step stores the prefix; later steps compute only the target, as the full forward does."""
    ref, ours = pair
    kw, _ = CASES["reference_padded_batch"]
    cache = ours.new_cache(cache_device)
    ref_cache = diffusers.models.transformers.transformer_qwenimage21.QwenImage21KVCache(CFG.num_layers)
    with torch.no_grad():
        first = ours(**kw, timestep=torch.tensor([0.9, 0.9]), kv_cache=cache, kv_cache_mode="extract")
        assert rel_err(first, ours(**kw, timestep=torch.tensor([0.9, 0.9]))) <= TOL
        assert cache.filled and cache.nbytes() > 0
        ref(**kw, timestep=torch.tensor([0.9, 0.9]), kv_cache=ref_cache, kv_cache_mode="extract")
        for t in ([0.5, 0.5], [0.2, 0.6]):
            t = torch.tensor(t)
            got = ours(**kw, timestep=t, kv_cache=cache, kv_cache_mode="cached")
            full = ours(**kw, timestep=t)[:, -got.shape[1]:]
            assert got.shape[1] == 16
            assert rel_err(got, full) <= TOL
            assert rel_err(got, ref(**kw, timestep=t, kv_cache=ref_cache, kv_cache_mode="cached")[0]) <= TOL


def test_adjacent_references_are_two_blocks():
    layout = build_layout(torch.tensor(ADJACENT + [True] * 4), ((1, 4, 4), (1, 4, 6), (1, 4, 4)))
    ids = layout.image_ids.tolist()
    assert ids == [-1] * 3 + [0] * 16 + [1] * 24 + [-1] * 3 + [2] * 16
    assert layout.segments == ((0, 3, True), (3, 19, False), (19, 43, False), (43, 46, True))
    # text advances one position; each image holds the frame axis, centred on 0, then advances by max(h, w)
    assert layout.positions[:3, 0].tolist() == [0, 1, 2]
    assert layout.positions[3].tolist() == [3, -2, -2] and layout.positions[19].tolist() == [7, -2, -3]
    assert layout.positions[43].tolist() == [13] * 3


def test_bad_layouts_are_named(pair):
    _, ours = pair
    kw, t = CASES["two_references"]
    with pytest.raises(ValueError, match="img_mask"):
        ours(**{**kw, "img_mask": kw["img_mask"][:, 1:]}, timestep=torch.tensor(t))
    with pytest.raises(ValueError, match="img_shapes"):
        ours(**{**kw, "img_shapes": [[(1, 4, 4), (1, 4, 4)]]}, timestep=torch.tensor(t))
    with pytest.raises(ValueError, match="kv_cache"):
        ours(**kw, timestep=torch.tensor(t), kv_cache_mode="cached")
