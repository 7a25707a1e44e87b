"""The MMDiT against the reference (diffusers.QwenImageTransformer2DModel): structure, and numerical parity in
float32 on CPU with the reference's own saved weights loaded through our loader (so the loader is covered too)."""
import os

import pytest
import torch
from _util import rel_err

from qwenimage.qwenimage_core import QwenImageTransformer, load_transformer, preset
from qwenimage.qwenimage_core.msrope import msrope_table

diffusers = pytest.importorskip("diffusers")
TOL = 1e-4  # max abs diff <= 1e-4 x max |reference output|


def test_full_preset_has_the_official_keys_and_shapes(reference_dir):
    ref = {}
    with open(os.path.join(reference_dir, "transformer_keys.tsv")) as fh:
        for line in fh:
            key, shape = line.rstrip("\n").split("\t")
            ref[key] = tuple(int(s) for s in shape.split("x"))
    with torch.device("meta"):
        model = QwenImageTransformer(preset("qwen-image"))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(ref) == 1933
    assert ours == ref
    assert sum(p.numel() for p in model.parameters()) == 20_430_401_088


def make_reference(tmp_path, seed=0, **flags):
    """A tiny random reference transformer, saved by the reference library and loaded by ours."""
    cfg = preset("tiny", **flags)
    kwargs = {k: v for k, v in cfg.to_dict().items() if k != "_class_name"}
    torch.manual_seed(seed)
    ref = diffusers.QwenImageTransformer2DModel(**kwargs).eval()
    with torch.no_grad():
        for p in ref.parameters():  # non-trivial values everywhere (the reference zero-inits nothing, but be sure)
            p.normal_(0, 0.2)
    folder = tmp_path / f"ref_{seed}_{'_'.join(flags)}"
    ref.save_pretrained(folder)
    ours = load_transformer(str(folder), dtype=torch.float32)
    return ref, ours


def run_both(ref, ours, *, shapes, txt_lens, sigma=None, **extra):
    """Same random inputs through both; text of the given per-sample lengths, padded with a mask."""
    batch, L = len(txt_lens), max(txt_lens)
    sets = [shapes] * batch if isinstance(shapes[0], tuple) else shapes
    n = sum(f * h * w for f, h, w in sets[0])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, n, 64, generator=g)
    e = torch.randn(batch, L, ours.config.joint_attention_dim, generator=g)
    mask = torch.zeros(batch, L, dtype=torch.long)
    for i, length in enumerate(txt_lens):
        mask[i, :length] = 1
        e[i, length:] = 0  # padded positions carry zeros, as the pipelines produce
    t = sigma if sigma is not None else torch.linspace(0.9, 0.2, batch)
    kw = dict(hidden_states=x, encoder_hidden_states=e, encoder_hidden_states_mask=mask, timestep=t,
              img_shapes=sets, **extra)
    with torch.no_grad():
        r = ref(**kw, return_dict=False)[0]
        o = ours(**kw)
    return o, r


def test_batch_of_two_with_padded_text(tmp_path):
    ref, ours = make_reference(tmp_path)
    o, r = run_both(ref, ours, shapes=[(1, 6, 6)], txt_lens=[11, 5])
    assert rel_err(o, r) <= TOL


def test_non_square_latent(tmp_path):
    ref, ours = make_reference(tmp_path)
    o, r = run_both(ref, ours, shapes=[(1, 24, 40)], txt_lens=[9])  # 48x80 latent pixels
    assert rel_err(o, r) <= TOL


def test_odd_patch_grid_of_1328px(tmp_path):
    ref, ours = make_reference(tmp_path)
    o, r = run_both(ref, ours, shapes=[(1, 83, 83)], txt_lens=[6])  # 1328 px / 16 = 83 patches a side
    assert rel_err(o, r) <= TOL


def test_edit_sample_with_two_references_of_different_sizes(tmp_path):
    ref, ours = make_reference(tmp_path)
    o, r = run_both(ref, ours, shapes=[(1, 8, 6), (1, 6, 10), (1, 5, 3)], txt_lens=[7, 12])
    assert rel_err(o, r) <= TOL


def test_edit_2511_zero_timestep_references(tmp_path):
    ref, ours = make_reference(tmp_path, zero_cond_t=True)
    assert ours.config.zero_cond_t
    o, r = run_both(ref, ours, shapes=[(1, 6, 6), (1, 4, 8)], txt_lens=[7, 4])
    assert rel_err(o, r) <= TOL
    # the switch matters: without it the same weights give another answer
    plain = load_transformer(str(tmp_path / "ref_0_zero_cond_t"), config=ours.config.replace(zero_cond_t=False))
    o2, _ = run_both(ref, plain, shapes=[(1, 6, 6), (1, 4, 8)], txt_lens=[7, 4])
    assert rel_err(o2, r) > 1e-3


def test_layered_additional_timestep_condition(tmp_path):
    ref, ours = make_reference(tmp_path, use_additional_t_cond=True)
    o, r = run_both(ref, ours, shapes=[(1, 6, 6)], txt_lens=[7, 4], additional_t_cond=torch.tensor([0, 1]))
    assert rel_err(o, r) <= TOL
    with pytest.raises(ValueError, match="additional_t_cond"):
        run_both(ref, ours, shapes=[(1, 6, 6)], txt_lens=[3])


def test_layered_layer3d_rope(tmp_path):
    ref, ours = make_reference(tmp_path, use_layer3d_rope=True, use_additional_t_cond=True)
    shapes = [(1, 6, 6), (1, 6, 6), (1, 6, 6)]  # two layers, then the condition image at frame -1
    o, r = run_both(ref, ours, shapes=shapes, txt_lens=[5], additional_t_cond=torch.tensor([1]))
    assert rel_err(o, r) <= TOL


def test_batch_whose_samples_carry_different_image_sets(tmp_path):
    """The reference positions a batch by its first sample only; we position each sample by its own images,
    so the batch must equal each sample run through the reference alone."""
    ref, ours = make_reference(tmp_path, zero_cond_t=True)
    sets = [[(1, 4, 4), (1, 4, 6)], [(1, 4, 4), (1, 2, 12)]]  # same token count (40), different references
    g = torch.Generator().manual_seed(3)
    x, e = torch.randn(2, 40, 64, generator=g), torch.randn(2, 5, 24, generator=g)
    t = torch.tensor([0.8, 0.4])
    with torch.no_grad():
        o = ours(hidden_states=x, encoder_hidden_states=e, encoder_hidden_states_mask=torch.ones(2, 5), timestep=t,
                 img_shapes=sets)
        for i in range(2):
            r = ref(hidden_states=x[i:i + 1], encoder_hidden_states=e[i:i + 1], timestep=t[i:i + 1],
                    encoder_hidden_states_mask=torch.ones(1, 5), img_shapes=[sets[i]], return_dict=False)[0]
            assert rel_err(o[i:i + 1], r) <= TOL


def test_rope_tables_match_reference_exactly_for_odd_grids():
    cfg = preset("qwen-image")
    ref_rope = diffusers.models.transformers.transformer_qwenimage.QwenEmbedRope(10000, [16, 56, 56], scale_rope=True)
    for shapes in ([(1, 83, 83)], [(1, 83, 83), (1, 61, 47)], [(1, 3, 5), (1, 1, 1)]):
        vid, txt = ref_rope([shapes], max_txt_seq_len=20, device=torch.device("cpu"))
        ours = msrope_table([shapes], 20, 1, cfg.axes_dims_rope)
        assert torch.equal(ours[0], torch.cat([txt, vid]))


def test_rope_tables_are_cached_by_shape():
    a = msrope_table([[(1, 9, 7)]], 10, 1, (4, 6, 6))
    b = msrope_table([[(1, 9, 7)]], 10, 2, (4, 6, 6))
    assert a.data_ptr() == b.data_ptr()


def test_mismatched_image_shapes_are_refused(tmp_path):
    _, ours = make_reference(tmp_path)
    with pytest.raises(ValueError, match="img_shapes"):
        ours(hidden_states=torch.randn(1, 30, 64), encoder_hidden_states=torch.randn(1, 4, 24),
             timestep=torch.tensor([0.5]), img_shapes=[(1, 4, 4)])


def test_return_conventions_and_unknown_arguments(tmp_path):
    _, ours = make_reference(tmp_path)
    kw = dict(hidden_states=torch.randn(1, 16, 64), encoder_hidden_states=torch.randn(1, 4, 24),
              timestep=torch.tensor([0.5]), img_shapes=[(1, 4, 4)])
    with torch.no_grad():
        v = ours(**kw)
        assert torch.equal(ours(**kw, return_dict=False)[0], v)
        assert torch.equal(ours(**kw, return_dict=True).sample, v)
        assert torch.equal(ours(**kw, guidance=None, attention_kwargs=None), v)
    with pytest.raises(TypeError, match="guidance"):
        ours(**kw, guidance=torch.tensor([3.0]))


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    _, model = make_reference(tmp_path)
    model.requires_grad_(True)
    kw = dict(hidden_states=torch.randn(2, 16, 64), encoder_hidden_states=torch.randn(2, 5, 24),
              encoder_hidden_states_mask=torch.tensor([[1] * 5, [1] * 3 + [0] * 2]),
              timestep=torch.tensor([0.3, 0.6]), img_shapes=[(1, 4, 4)])
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.enable_gradient_checkpointing(ckpt)
        model(**kw).square().mean().backward()
        # the last block's text-stream output is unused, so its text weights get no gradient (as in the reference)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0.9 * len(list(model.parameters()))
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5), n


def test_attention_goes_through_the_swappable_backend(tmp_path):
    from qwenimage.qwenimage_core import attention as attn_mod

    _, ours = make_reference(tmp_path)
    calls = []

    def counting(q, k, v, mask):
        calls.append(q.shape)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    attn_mod.register_attention_backend("counting", counting)
    attn_mod.set_attention_backend("counting")
    try:
        with torch.no_grad():
            ours(hidden_states=torch.randn(1, 16, 64), encoder_hidden_states=torch.randn(1, 4, 24),
                 timestep=torch.tensor([0.5]), img_shapes=[(1, 4, 4)])
    finally:
        attn_mod.set_attention_backend("sdpa")
    assert len(calls) == ours.config.num_layers and calls[0] == (1, 2, 20, 16)
