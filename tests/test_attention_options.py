"""Per-layer attention options (sliding window, soft-capping, attention sinks) on packed rows, against
transformers' own eager attention running each sequence alone (tiny random Mistral, Gemma 2, gpt-oss).

The window (8 tokens) is far shorter than the sequences, the soft-cap (0.5) bends most scores, and
sinks are large: dropping any of them moves rewards by orders of magnitude more than the tolerance.
Also: the backend-selection rules (which kernel may run a model where, and why not).
"""
import pytest
import torch

from ray_rm.config_schema import ModelConfig
from ray_rm.data.packer import pack_groups
from ray_rm.errors import UserError
from ray_rm.model.batch import collate_row
from ray_rm.model.build import build_reward_model, resolve_attn
from test_model import packed_rewards, random_groups

WINDOW = 8


def _save(path, model):
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def windowed_models(tmp_path_factory):
    """{name: (model dir, what it exercises)}: random tiny configs of three architectures."""
    from transformers import (Gemma2Config, Gemma2Model, GptOssConfig, GptOssModel, MistralConfig,
                              MistralModel)

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("windowed")
    common = dict(vocab_size=3100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0)
    mistral = MistralModel(MistralConfig(sliding_window=WINDOW, **common))
    gemma2 = Gemma2Model(Gemma2Config(sliding_window=WINDOW, attn_logit_softcapping=0.5, head_dim=16,
                                      query_pre_attn_scalar=16, **common))
    gpt_oss = GptOssModel(GptOssConfig(sliding_window=WINDOW, head_dim=16, num_local_experts=4,
                                       num_experts_per_tok=2, **common))
    with torch.no_grad():
        for layer in gpt_oss.layers:
            layer.self_attn.sinks.normal_(0.0, 2.0)  # large sinks: dropping them changes every output
    return {"mistral": _save(root / "mistral", mistral), "gemma2": _save(root / "gemma2", gemma2),
            "gpt_oss": _save(root / "gpt_oss", gpt_oss)}


def eager_alone(model_dir, head, sequences):
    """Reward of each sequence run alone through transformers' eager attention (its own masks and options)."""
    from transformers import AutoModel

    ref = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    out = []
    with torch.no_grad():
        for seq in sequences:
            hidden = ref(input_ids=torch.tensor([seq]), use_cache=False).last_hidden_state[0, -1]
            out.append(float(head(hidden)))
    return out


@pytest.mark.parametrize("arch", ["mistral", "gemma2", "gpt_oss"])
@pytest.mark.parametrize("attn", ["varlen", "eager"])
@pytest.mark.parametrize("share_prompt", [False, True])
def test_packed_rewards_equal_transformers_eager_alone(windowed_models, arch, attn, share_prompt):
    model_dir = windowed_models[arch]
    model = build_reward_model(ModelConfig(name_or_path=model_dir, attn_implementation=attn), seed=1).eval()
    groups = random_groups(8, vocab=(5, 3000), seed=11)
    keys = [(g.example_id, j) for g in groups for j in range(len(g.sequences))]
    ref = dict(zip(keys, eager_alone(model_dir, model._head, [s for g in groups for s in g.sequences])))
    with torch.no_grad():
        got = packed_rewards(model, list(pack_groups(groups, 400, share_prompt, 64)))
    assert max(abs(got[k] - ref[k]) for k in keys) < 2e-4
    assert max(abs(got[k]) for k in keys) > 1e-2  # not a vacuous comparison of zeros


@pytest.mark.parametrize("arch", ["mistral", "gemma2", "gpt_oss"])
def test_varlen_gradients_equal_eager_dense_reference(windowed_models, arch):
    row = next(iter(pack_groups(random_groups(6, seed=12), 400, True, 64)))
    grads = []
    for attn in ("varlen", "eager"):
        model = build_reward_model(ModelConfig(name_or_path=windowed_models[arch], attn_implementation=attn), seed=1)
        model(collate_row(row)).rewards.square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 5
    assert max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0]) < 1e-4


def test_auto_never_gives_a_half_precision_kernel_fp32():
    """flash kernels reject fp32: on CUDA, fp32 (model.dtype / serve.dtype float32) takes SDPA blocks."""
    assert resolve_attn("auto", "cuda", torch.float32)[1] == "sdpa_blocks"
    assert resolve_attn("auto", "cpu", torch.float32)[1] == "sdpa_blocks"
    for name in ("torch_varlen", "flash_attn"):
        from ray_rm.model.attention import REGISTRY

        assert "not float32" in REGISTRY[name].refusal("cuda", torch.float32, set())
        assert "sinks" in REGISTRY[name].refusal("cuda", torch.bfloat16, {"softcap", "sinks"})


@pytest.mark.parametrize("requested,dtype,match", [
    ("flash_attention_2", torch.float32, "not float32"),
    ("torch_varlen", torch.bfloat16, "runs on cuda only"),
    ("flash_attention_2", torch.bfloat16, "runs on cuda only"),
])
def test_explicit_backend_is_refused_with_its_reason(requested, dtype, match):
    device = "cuda" if dtype == torch.float32 else "cpu"
    with pytest.raises(UserError, match=match) as info:
        resolve_attn(requested, device, dtype)
    assert "model.attn_implementation" in str(info.value)


def test_torch_varlen_api_is_detected_from_its_signature():
    """torch 2.13 here: varlen_attn(…, window_size=, enable_gqa=, scale=) exists; the detection reads it."""
    from ray_rm.model import attn_varlen

    fn, params = attn_varlen._torch_varlen_api()
    from torch.nn.attention.varlen import varlen_attn

    assert fn is varlen_attn and {"window_size", "scale"} <= params
    assert attn_varlen.torch_varlen_honours() == frozenset({"window"})
