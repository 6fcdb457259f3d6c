"""Reward model on packed rows vs independent references: each sequence alone, dense-mask SDPA, HF classes."""
import math
import random

import pytest
import torch

from ray_rm.config_schema import LoraConfig, ModelConfig
from ray_rm.data.packer import TokenizedGroup, append_group, pack_groups
from ray_rm.model.batch import AttentionBlock
from ray_rm.packed import PackedRow
from ray_rm.prefix import common_prefix_len
from ray_rm.errors import UserError
from ray_rm.model.attention import AttentionPlan, block_attention, dense_block_mask
from ray_rm.model.batch import collate_row
from ray_rm.model.build import build_reward_model

NAN = math.nan


def random_groups(n=10, vocab=(5, 3000), seed=0, k_max=3):
    rng = random.Random(seed)
    groups = []
    for i in range(n):
        prompt = [rng.randint(*vocab) for _ in range(rng.randint(1, 40))]
        k = 2 if i % 3 else k_max
        seqs = [prompt + [rng.randint(*vocab) for _ in range(rng.randint(1, 30))] for _ in range(k)]
        groups.append(TokenizedGroup(f"g{i}", seqs, list(range(k)), common_prefix_len(seqs, keep_own=1), NAN, [NAN] * k))
    return groups


def alone(model, seq):
    """Reward of one sequence run alone through the plain backbone (no packing, no custom attention)."""
    ids = torch.tensor([seq])
    out = model.backbone(input_ids=ids, use_cache=False).last_hidden_state[0]
    if model.kind == "decoder":
        return model._head(out[-1:]).item()
    pooled = model.backbone.pooler(out[None, :1]) if model.pooling == "cls" else out.mean(0, keepdim=True)
    return model._head(pooled).item()


def packed_rewards(model, rows):
    got = {}
    for row in rows:
        r = model(collate_row(row)).rewards.tolist()
        k = 0
        for gid, size in zip(row.group_ids, row.group_sizes):
            for j in range(size):
                got[(gid, j)] = r[k]
                k += 1
    return got


@pytest.mark.parametrize("attn", ["varlen", "sdpa"])
@pytest.mark.parametrize("share_prompt", [False, True])
def test_packed_rewards_equal_each_sequence_alone(tiny_decoder_dir, attn, share_prompt):
    model = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir, attn_implementation=attn), seed=1).eval()
    groups = random_groups()
    with torch.no_grad():
        ref = {(g.example_id, j): alone(model, s) for g in groups for j, s in enumerate(g.sequences)}
        got = packed_rewards(model, list(pack_groups(groups, 256, share_prompt, 64)))
    assert got.keys() == ref.keys()
    assert max(abs(got[k] - ref[k]) for k in ref) < 1e-4


def test_single_kv_head_model_packed_equals_alone(tiny_gqa1_decoder_dir):
    model = build_reward_model(ModelConfig(name_or_path=tiny_gqa1_decoder_dir), seed=2).eval()
    groups = random_groups(6, seed=3)
    with torch.no_grad():
        ref = {(g.example_id, j): alone(model, s) for g in groups for j, s in enumerate(g.sequences)}
        got = packed_rewards(model, list(pack_groups(groups, 400, True, 64)))
    assert max(abs(got[k] - ref[k]) for k in ref) < 1e-4


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_encoder_packed_equals_alone(minilm_dir, pooling):
    """The real all-MiniLM-L6-v2 weights: packed bidirectional blocks == each sequence alone."""
    model = build_reward_model(ModelConfig(name_or_path=minilm_dir, pooling=pooling), seed=1).eval()
    groups = random_groups(5, vocab=(1000, 20000), seed=4)
    for g in groups:  # encoders read [CLS] ... [SEP]
        g.sequences = [[101] + s + [102] for s in g.sequences]
        g.shared_len = 0
    with torch.no_grad():
        ref = {(g.example_id, j): alone(model, s) for g in groups for j, s in enumerate(g.sequences)}
        got = packed_rewards(model, list(pack_groups(groups, 512, False, 64)))
    assert max(abs(got[k] - ref[k]) for k in ref) < 1e-4


def test_varlen_attention_matches_dense_mask_forward_and_backward():
    torch.manual_seed(0)
    blocks = [AttentionBlock(0, 7), AttentionBlock(7, 3), AttentionBlock(10, 5, 7, 3), AttentionBlock(15, 9, 7, 3),
              AttentionBlock(24, 40), AttentionBlock(64, 1)]
    total = 65
    q = torch.randn(1, 4, total, 8, requires_grad=True)
    k = torch.randn(1, 2, total, 8, requires_grad=True)
    v = torch.randn(1, 2, total, 8, requires_grad=True)
    plan = AttentionPlan.build(blocks, total, torch.device("cpu"))
    out = block_attention(plan, q, k, v, 8 ** -0.5)
    mask = dense_block_mask(blocks, total)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=8 ** -0.5, enable_gqa=True)
    assert torch.allclose(out, ref, atol=1e-5)
    g1 = torch.autograd.grad(out.square().sum(), (q, k, v))
    g2 = torch.autograd.grad(ref.square().sum(), (q, k, v))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g1, g2))


def test_varlen_gradients_equal_dense_reference(tiny_decoder_dir):
    rows = list(pack_groups(random_groups(6, seed=7), 400, True, 64))
    grads = []
    for attn in ("varlen", "sdpa"):
        model = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir, attn_implementation=attn), seed=1)
        model(collate_row(rows[0])).rewards.square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0]) < 1e-4


def test_gradient_checkpointing_gives_same_gradients(tiny_decoder_dir):
    row = next(iter(pack_groups(random_groups(4, seed=8), 400, True, 64)))
    grads = []
    for ckpt in (False, True):
        model = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir, gradient_checkpointing=ckpt), seed=1)
        model.train()
        assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules()) == ckpt
        model(collate_row(row)).rewards.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    # every parameter, the backbone's included: a wrong recompute in the backward pass changes the layers' gradients
    # while the head's (which reads only the final hidden states of the forward) could stay the same
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10 and "head.weight" in grads[0]
    assert any("layers.0." in n for n in grads[0])
    for name, g in grads[0].items():
        assert g.abs().max() > 0 or "embed" in name, name
        assert torch.allclose(g, grads[1][name], rtol=1e-5, atol=1e-6), name


def test_head_init_and_dropout_off(tiny_decoder_dir, minilm_dir):
    model = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir), seed=3)
    std = model.head.weight.std().item()
    assert 0.5 / math.sqrt(65) < std < 1.5 / math.sqrt(65)  # normal(0, 1/sqrt(H+1)), H = 64
    assert model.head.bias is None and model.head.weight.dtype == torch.float32
    enc = build_reward_model(ModelConfig(name_or_path=minilm_dir))
    assert enc.config.hidden_dropout_prob == 0.0 and enc.config.attention_probs_dropout_prob == 0.0


def test_lora_trains_adapters_and_full_head(tiny_decoder_dir):
    model = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir), LoraConfig(r=4), seed=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "head.weight" in trainable
    assert all("lora_" in n for n in trainable - {"head.weight"}) and len(trainable) > 1
    assert "head.weight" in model.state_dict()  # the head is always saved (XTuner #916)


def test_qlora_on_cpu_fails_clearly(tiny_decoder_dir):
    with pytest.raises(UserError, match="CUDA GPU"):
        build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir), LoraConfig(r=4, quantize_4bit=True))


def test_flash_request_on_cpu_fails_clearly(tiny_decoder_dir):
    with pytest.raises(UserError, match="flash-attn"):
        build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir, attn_implementation="flash_attention_2"))


def test_token_values_cover_every_position(tiny_decoder_dir):
    model = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir), seed=1).eval()
    row = PackedRow()
    append_group(row, TokenizedGroup("x", [[5, 6, 7], [5, 8]], [0, 1], 1, NAN, [NAN, NAN]), True)
    batch = collate_row(row)
    out = model(batch, token_values=True)
    assert out.token_values.shape == (batch.input_ids.shape[1],)
    assert torch.allclose(out.token_values[batch.reward_index], out.rewards, atol=1e-6)
