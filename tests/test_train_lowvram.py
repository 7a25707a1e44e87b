"""LoRA training on small cards: an fp8 base whose LoRA gradients stay within the e4m3 rounding bound of the
float base (all the difference is the weights' rounding), block swap through forward and backward whose gradients
equal the resident run's bit for bit (prefetching one block ahead each way), a trainer run with swap that gives
the resident run's adapter, and the memory plan's placements for given budgets (and its refusals)."""
import copy

import pytest
import torch
from safetensors.torch import load_file

from _models import write_tiny_models

from qwenimage.qwenimage_core import QwenImageTransformer, load_transformer, preset
from qwenimage.qwenimage_core.checkpoint import save_transformer
from qwenimage.qwenimage_core.fp8 import FP8Linear, quantize_linears
from qwenimage.qwenimage_core.offload import BlockSwap
from qwenimage.training.config import ConfigError, load_config
from qwenimage.training.memory_plan import GiB, PlanError, estimate, footprint, make_plan
from qwenimage.training.trainer import Trainer

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
E4M3_REL = 2.0 ** -4


def _tiny(layers=4, seed=0):
    torch.manual_seed(seed)
    model = QwenImageTransformer(preset("tiny", num_layers=layers, joint_attention_dim=64))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval().requires_grad_(False)


def _lora(model, seed=1):
    """peft LoRA on the attention projections, B random too (so A gets gradients), in float32."""
    from peft import LoraConfig, inject_adapter_in_model

    model = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS), model)
    g = torch.Generator().manual_seed(seed)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
        if "lora_" in n:
            p.data = torch.randn(p.shape, generator=g) * 0.1
    return model


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 24, 64, generator=g),
                encoder_hidden_states=torch.randn(2, 7, 64, generator=g),
                encoder_hidden_states_mask=torch.tensor([[1] * 7, [1] * 4 + [0] * 3]),
                timestep=torch.tensor([0.7, 0.3]), img_shapes=[(1, 4, 6)]), torch.randn(2, 24, 64, generator=g)


def _grads(model, seed=0):
    kw, target = _batch(seed)
    loss = ((model(**kw) - target) ** 2).mean()
    loss.backward()
    # (the last block's text queries and to_add_out feed nothing: only image tokens are predicted)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()
             if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0}
    model.zero_grad(set_to_none=True)
    return grads


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# ------------------------------------------------------------------------------------------------- fp8 base

def test_fp8_base_lora_grads_within_the_e4m3_bound(tmp_path):
    base = _tiny()
    save_transformer(base, str(tmp_path / "m"))
    fp8 = load_transformer(str(tmp_path / "m"), dtype=torch.float32, weight_dtype=torch.float8_e4m3fn)
    # quantising a built model (the bench's way) gives the very weights and scales loading does
    built = copy.deepcopy(base)
    quantize_linears(built, [n for n, m in fp8.named_modules() if isinstance(m, FP8Linear)])
    for n, m in fp8.named_modules():
        if isinstance(m, FP8Linear):
            q = built.get_submodule(n)
            assert torch.equal(q.weight.view(torch.uint8), m.weight.view(torch.uint8)), n
            assert torch.equal(q.weight_scale, m.weight_scale) and torch.equal(q.bias, m.bias), n
    # the twin: the float model holding exactly the de-quantised weights
    twin = copy.deepcopy(base)
    for name, m in fp8.named_modules():
        if isinstance(m, FP8Linear):
            twin.get_submodule(name).weight.data = m.dequantized_weight(torch.float32)
    models = {k: _lora(m) for k, m in {"float": base, "fp8": fp8, "twin": twin}.items()}
    kept = {}  # what autograd keeps for the backward
    for k in ("fp8", "twin"):
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.setdefault(k, []).append(t) or t, lambda t: t):
            g = _grads(models[k])
        g8, gt = (g, None) if k == "fp8" else (g8, g)
    gf = _grads(models["float"])
    assert set(g8) == set(gf) and len(g8) == 4 * 8 * 2 - 4
    assert all(g.dtype == torch.float32 for g in g8.values())  # LoRA and its gradients stay in full precision
    assert not any(p.requires_grad for n, p in models["fp8"].named_parameters() if "lora_" not in n)
    # every base weight within e4m3's relative step (2^-4 of itself, plus half a subnormal step near zero)
    for name, m in fp8.named_modules():
        if isinstance(m, FP8Linear):
            w = base.get_submodule(name).weight
            assert ((m.dequantized_weight(torch.float32) - w).abs()
                    <= E4M3_REL * w.abs() + 2.0 ** -10 * m.weight_scale + 1e-12).all(), name
    # up-cast per layer, forward and backward: the gradients are those of the rounded weights, nothing else...
    assert all(_rel(g8[n], gt[n]) < 1e-5 for n in g8)
    # ...which moves them by about that step: the whole gradient within 2^-4, each layer's within two steps
    flat = lambda g: torch.cat([g[n].flatten() for n in sorted(g)])  # noqa: E731
    assert 0 < _rel(flat(g8), flat(gf)) < E4M3_REL
    assert all(0 < _rel(g8[n], gf[n]) < 2 * E4M3_REL for n in g8)
    # the backward up-casts again from the fp8 weight it saved: no high-precision copy of a weight is kept
    fp8_shapes = {tuple(m.weight.shape) for m in fp8.modules() if isinstance(m, FP8Linear)}
    float_weights = lambda ts: [t for t in ts if t.dim() == 2 and t.dtype == torch.float32  # noqa: E731
                                and tuple(t.shape) in fp8_shapes]
    assert any(t.dtype == torch.float8_e4m3fn for t in kept["fp8"]) and not float_weights(kept["fp8"])
    assert float_weights(kept["twin"])  # (plain float layers do keep theirs: the check sees them)


# ---------------------------------------------------------------------------------------------- block swap

def test_block_swap_grads_equal_resident_and_prefetch_both_ways():
    resident_model = _lora(_tiny(layers=5))
    resident_model.enable_gradient_checkpointing()
    swapped = copy.deepcopy(resident_model)
    lora_before = {n: p for n, p in swapped.named_parameters() if p.requires_grad}
    swap = BlockSwap(swapped, 1, "cpu", train=True, trace=True)
    runs = []
    for i, block in enumerate(swapped.transformer_blocks):
        block.register_forward_pre_hook(
            lambda m, a, i=i: runs.append((i, torch._C._current_graph_task_id() != -1, set(swap.loaded))))
    for step in range(2):
        runs.clear()
        swap.moves.clear()
        want, got = _grads(resident_model, step), _grads(swapped, step)
        assert want.keys() == got.keys()
        for n in want:
            assert torch.equal(want[n], got[n]), n
        # forward: block i runs with i+1 already on its way; backward (recomputed): i-1 on its way
        fwd = [(i, loaded) for i, back, loaded in runs if not back and i >= 1]
        bwd = [(i, loaded) for i, back, loaded in runs if back and i >= 1]
        assert [i for i, _ in fwd] == [1, 2, 3, 4] and [i for i, _ in bwd] == [4, 3, 2, 1]
        assert all(loaded == ({i, i + 1} if i < 4 else {4}) for i, loaded in fwd)
        assert all(loaded == ({i, i - 1} if i > 1 else {1}) for i, loaded in bwd)
        loads = [i for what, i in swap.moves if what == "load"]
        # the block at each turn stays: the last for the backward, the first for the next step
        assert loads == ([1, 2, 3, 4, 3, 2, 1] if step == 0 else [2, 3, 4, 3, 2, 1])
    assert swap.max_loaded <= 2
    # trainable parameters stayed on the device as the same objects (the optimiser holds them); frozen tensors of
    # the blocks not in flight are their CPU copies again
    assert {n: p for n, p in swapped.named_parameters() if p.requires_grad} == lora_before
    for i, held in swap.cpu.items():
        if i not in swap.loaded:
            assert all(getattr(m, kind)[name] is cpu for m, kind, name, cpu in held)
    assert all(len(held) > 0 for held in swap.cpu.values())


def test_block_swap_with_an_fp8_base_equals_resident_fp8(tmp_path):
    save_transformer(_tiny(layers=4), str(tmp_path / "m"))
    fp8 = _lora(load_transformer(str(tmp_path / "m"), dtype=torch.float32, weight_dtype=torch.float8_e4m3fn))
    fp8.enable_gradient_checkpointing()
    swapped = copy.deepcopy(fp8)
    BlockSwap(swapped, 2, "cpu", train=True)
    want, got = _grads(fp8), _grads(swapped)
    assert all(torch.equal(want[n], got[n]) for n in want)


# ---------------------------------------------------------------------------------------------- the trainer

@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    """A 4-block tiny base (diffusers folder), the tiny VAE and text encoder, 4 captioned squares."""
    from qwenimage.training.data.synthetic import draw_shape

    root = tmp_path_factory.mktemp("lowvram")
    paths = write_tiny_models(root / "models", len(tokenizer))
    save_transformer(_tiny(layers=4), str(root / "base"))
    data = root / "data"
    data.mkdir()
    for i in range(4):
        colour = ("red", "blue")[i % 2]
        draw_shape("square", colour, "white", 64, 64, (8 + i, 8, 40 + i, 40)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a {colour} square")
    return {"root": root, "base": str(root / "base"), "vae": paths["vae"], "te": paths["text_encoder"],
            "data": str(data)}


def _config(world, out, **train):
    return load_config({
        "model": {"path": world["base"], "vae": world["vae"], "text_encoder": world["te"]},
        "data": {"path": world["data"], "area": 64 * 64, "batch_size": 2, "cache_dir": str(world["root"] / "cache")},
        "train": {"mode": "lora", "steps": 2, **train}, "lora": {"rank": 2, "alpha": 2.0},
        "optimizer": {"lr": 1e-2, "weight_decay": 0.0},
        "output": {"dir": str(out), "save_every": 1000}, "logging": {"tensorboard": False, "progress": False}})


def test_lora_run_with_fp8_base_and_swap_gives_the_resident_adapter(world, tmp_path, capsys):
    resident = Trainer(_config(world, tmp_path / "a", fp8_base="on"))
    assert "0 of 4 blocks swapped" in capsys.readouterr().out
    assert isinstance(resident.unwrapped.transformer_blocks[0].attn.to_q.base_layer, FP8Linear)
    assert all(p.dtype == torch.float32 for p in resident.params.values())
    a = resident.run()
    swapped = Trainer(_config(world, tmp_path / "b", fp8_base="on", blocks_to_swap=3))
    printed = capsys.readouterr().out
    assert "fp8 (e4m3fn) base, 3 of 4 blocks swapped, gradient checkpointing on" in printed
    assert swapped.swap is not None and swapped.swap.resident == 1 and swapped.unwrapped.gradient_checkpointing
    b = swapped.run()
    assert a["losses"] == b["losses"]
    la, lb = load_file(a["outputs"]["lora"]), load_file(b["outputs"]["lora"])
    assert la.keys() == lb.keys() and all(torch.equal(la[k], lb[k]) for k in la)
    assert any(v.abs().sum() > 0 for k, v in lb.items() if "lora_B" in k)  # it trained


def test_trainer_refuses_a_budget_before_loading(world, tmp_path):
    cfg = _config(world, tmp_path, vram_budget_gb=0.001)
    with pytest.raises(PlanError, match=r"train.vram_budget_gb: 0.001 GB cannot hold.*smallest budget that does is "
                                        r"\d+\.\d\d GB, where the plan picks"):
        Trainer(cfg)
    with pytest.raises(ConfigError, match="train.blocks_to_swap: 9, but the model has 4 blocks"):
        Trainer(_config(world, tmp_path, blocks_to_swap=9))


def test_config_checks_the_new_fields():
    ok = {"model": {"path": "m"}, "data": {"path": "d"}, "train": {"mode": "lora"}}
    for train, message in [({"blocks_to_swap": -2}, "train.blocks_to_swap: must be -1"),
                           ({"fp8_base": "yes"}, "train.fp8_base: 'yes' is not one of auto, on, off"),
                           ({"vram_budget_gb": -1.0}, "train.vram_budget_gb: must be 0 or more"),
                           ({"mode": "full", "blocks_to_swap": 4}, "the memory plan is for train.mode 'lora'")]:
        with pytest.raises(ConfigError, match=message):
            load_config({**ok, "train": {**ok["train"], **train}})


# ------------------------------------------------------------------------------------------------ the plan

@pytest.fixture(scope="module")
def official():
    """The official 20B model, LoRA rank 32 on the attention projections, 1024 px (4,096 + 256 tokens)."""
    return footprint(preset("qwen-image"), TARGETS, 32)


# budget (GB) -> (fp8 base, blocks swapped, gradient checkpointing): the README's card-size table
CARD_TABLE = {80: (False, 0, False), 48: (False, 0, True), 40: (True, 0, True), 24: (True, 0, True),
              20: (True, 15, True), 16: (True, 27, True), 12: (True, 40, True), 10: (True, 46, True),
              8: (True, 53, True), 6: (True, 59, True)}


@pytest.mark.parametrize("budget", sorted(CARD_TABLE))
def test_plan_picks_the_documented_placement(official, budget):
    p = make_plan(official, budget)
    assert (p.fp8, p.blocks_to_swap, p.checkpointing) == CARD_TABLE[budget]
    assert p.need <= budget * GiB
    if p.blocks_to_swap:  # the fewest blocks swapped that fit
        with pytest.raises(PlanError):
            make_plan(official, budget, blocks_to_swap=p.blocks_to_swap - 1, fp8="on")
    assert "predicted peak" in p.describe() and f"{p.blocks_to_swap} of 60 blocks swapped" in p.describe()


def test_plan_memory_model_and_refusals(official):
    e = official.compute_bytes
    assert e == 2 and 20.0e9 < (official.blocks * (official.block_linear + official.block_other)
                                + official.rest) < 20.6e9  # 20.4B parameters
    # fp8 halves the blocks' linear weights and nothing else
    bf, q = estimate(official, False, 0, True), estimate(official, True, 0, True)
    (wb, wq) = (next(v for k, v in d.items() if k.startswith("base weights")) for d in (bf, q))
    assert wb - wq == official.blocks * official.block_linear
    # the goals for the musubi table's placements
    assert make_plan(official, 24, blocks_to_swap=0, fp8="on").need <= 24 * GiB
    assert make_plan(official, 12, blocks_to_swap=45, fp8="on").need <= 12 * GiB
    # too small: refused with the smallest budget that fits, and that budget fits
    with pytest.raises(PlanError, match=r"5 GB cannot hold.*does is \d+\.\d\d GB.*60 of 60 blocks swapped") as err:
        make_plan(official, 5)
    smallest = float(err.value.args[0].split("does is ")[1].split(" GB")[0])
    assert make_plan(official, smallest).blocks_to_swap == 60
    with pytest.raises(PlanError, match="smallest budget that does is 23.87 GB"):
        make_plan(official, 16, blocks_to_swap=0, fp8="on")  # an explicit placement that does not fit
    # fp8 off: full-precision blocks swap instead
    off = make_plan(official, 16, fp8="off")
    assert not off.fp8 and off.blocks_to_swap > CARD_TABLE[16][1]
    # the text encoder (Qwen2.5-VL-7B, ~16 GB in bf16) and VAE go to the GPU only beside a plan they fit next to
    assert not make_plan(official, 24, encoder_bytes=16 * GiB).encoders_on_gpu
    assert make_plan(official, 48, encoder_bytes=4 * GiB).encoders_on_gpu
    assert "on the CPU" in make_plan(official, 24, encoder_bytes=16 * GiB).describe()
    # without checkpointing every block keeps its activations: far more than with it
    assert sum(estimate(official, True, 0, False).values()) > sum(q.values()) + 20 * GiB


def test_fp8_and_full_precision_bases_start_from_the_same_adapters(world, tmp_path):
    """Issue 25: the adapters were initialised again on an fp8 base (other values, and the generator consumed).
    Same seed: the same starting adapters whatever the base's precision; after training, the adapters differ only
    by what the base's e4m3 rounding moved."""
    runs = {k: Trainer(_config(world, tmp_path / k, fp8_base=k)) for k in ("off", "on")}
    assert isinstance(runs["on"].unwrapped.transformer_blocks[0].attn.to_q.base_layer, FP8Linear)
    assert not isinstance(runs["off"].unwrapped.transformer_blocks[0].attn.to_q.base_layer, FP8Linear)
    start = {k: {n: p.detach().clone() for n, p in t.params.items()} for k, t in runs.items()}
    assert start["on"].keys() == start["off"].keys()
    assert all(torch.equal(start["on"][n], start["off"][n]) for n in start["off"])
    losses = {k: t.run()["losses"] for k, t in runs.items()}
    # the losses (and so the gradients' source) within e4m3's relative step; the adapters too, though Adam's
    # sign-like first steps move a small gradient element as far as a large one, so single updates differ more
    assert all(abs(a - b) < E4M3_REL * abs(b) for a, b in zip(losses["on"], losses["off"])), losses
    flat = {k: torch.cat([t.params[n].detach().flatten() for n in sorted(t.params)]) for k, t in runs.items()}
    first = torch.cat([start["off"][n].flatten() for n in sorted(start["off"])])
    assert not torch.equal(flat["on"], flat["off"]) and not torch.equal(flat["off"], first)
    assert _rel(flat["on"], flat["off"]) < E4M3_REL


def _refusal(fp, budget):
    with pytest.raises(PlanError) as err:
        make_plan(fp, budget)
    msg = err.value.args[0]
    return float(msg.split("does is ")[1].split(" GB")[0]), msg.split("the plan picks ")[1].split(". Lower")[0]


@pytest.mark.parametrize("preset_name, budget", [("tiny", 0.5), ("qwen-image", 5)])
def test_a_refused_budget_names_the_true_minimum_and_the_placement_picked_there(preset_name, budget):
    """Issue 25: 2.1 GB was named (the minimum rounded up to a tenth) while 2.02 GB was accepted, with another
    placement than the one named."""
    config = preset(preset_name, **({"joint_attention_dim": 64} if preset_name == "tiny" else {}))
    fp = footprint(config, TARGETS, 2, tokens=272) if preset_name == "tiny" else footprint(config, TARGETS, 32)
    least, named = _refusal(fp, budget)
    got = make_plan(fp, least)
    assert got.summary() == named
    with pytest.raises(PlanError):
        make_plan(fp, round(least - 0.01, 2))


def test_the_printed_plan_says_cpu_without_a_gpu(world, tmp_path, capsys):
    p = make_plan(footprint(preset("qwen-image"), TARGETS, 32), 48, encoder_bytes=4 * GiB)
    assert "else on the GPU" in p.describe(gpu=True)
    assert "GPU here" not in p.describe(gpu=True)
    text = p.describe(gpu=False)
    assert "on the GPU" not in text and "no GPU here" in text and "else on the CPU" in text
    if not torch.cuda.is_available():  # the trainer prints the CPU wording on this machine
        Trainer(_config(world, tmp_path, vram_budget_gb=40.0))
        printed = capsys.readouterr().out
        assert "memory plan for 40 GB (no GPU here" in printed and "on the GPU" not in printed, printed
