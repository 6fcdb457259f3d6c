"""Precision and device rules: what trains in which dtype, what is refused (naming the keys), and what
the export holds.

* The value head computes in fp32 even when DeepSpeed has cast every module parameter to bf16.
* A run configured for a GPU kernel (flash_attention_2) exports on the CPU.
* Unsupported combinations fail validation before any worker starts, naming the keys.
* Real DeepSpeed on one CPU rank (gloo), through the train step and export code: bf16 trains with fp32
  master weights that the export reads (exported rewards equal the trained model's), and optimizer
  offload steps with DeepSpeed's CPU Adam.
"""
import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ray_rm.config_schema import LoraConfig, ModelConfig
from ray_rm.data.packer import pack_groups
from ray_rm.errors import UserError
from ray_rm.model.batch import collate_row
from ray_rm.model.build import build_reward_model
from test_model import packed_rewards, random_groups
from train_helpers import tiny_config


def is_bf16_exact(t: torch.Tensor) -> bool:
    return bool((t.float() == t.to(torch.bfloat16).float()).all())


def test_value_head_computes_in_fp32_under_a_bf16_module(tiny_decoder_dir):
    model = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir), seed=1).eval()
    for p in model.parameters():  # what DeepSpeed bf16 does to every parameter of the module
        p.data = p.data.to(torch.bfloat16)
    batch = collate_row(next(iter(pack_groups(random_groups(6, seed=2), 400, True, 64))))
    with torch.no_grad():
        rewards = model(batch).rewards
        hidden = model._backbone_forward(batch)[batch.reward_index]
    assert rewards.dtype == torch.float32 and rewards.numel() >= 12
    expected = hidden.float() @ model.head.weight.float().T
    assert torch.allclose(rewards, expected.squeeze(-1), atol=1e-6)
    assert not is_bf16_exact(rewards)  # a bf16 head would round every reward to 8 bits of mantissa


def test_export_of_a_flash_attention_run_happens_on_cpu(tiny_decoder_dir, tmp_path):
    from ray_rm.scoring import RewardScorer
    from ray_rm.train.checkpointing import export_final

    trained = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir), seed=4).eval()
    gpu_cfg = ModelConfig(name_or_path=tiny_decoder_dir, attn_implementation="flash_attention_2", dtype="bfloat16",
                          gradient_checkpointing=True)
    out = export_final(trained.state_dict(), gpu_cfg, LoraConfig(quantize_4bit=False), tiny_decoder_dir,
                       str(tmp_path / "hf"), {"append_eos": True, "chat_template": "auto", "max_length": 512})
    scorer = RewardScorer(out)
    groups = random_groups(4, seed=6)
    with torch.no_grad():
        ref = packed_rewards(trained, list(pack_groups(groups, 512, False, 8)))
    got = {(g.example_id, j): r for g, rs in zip(groups, scorer.score_groups([g.sequences for g in groups]))
           for j, r in enumerate(rs)}
    assert got.keys() == ref.keys() and len(got) == 10 and max(abs(got[k] - ref[k]) for k in got) < 1e-5


REFUSALS = [
    ({"model.dtype": "float16"}, ["model.dtype=float16", "train.use_gpu"]),
    ({"model.attn_implementation": "flash_attention_2"}, ["model.attn_implementation", "train.use_gpu"]),
    ({"model.attn_implementation": "torch_varlen", "train.use_gpu": True, "model.dtype": "float32"},
     ["model.attn_implementation", "model.dtype=float32"]),
    ({"train.lora.r": 4, "train.lora.quantize_4bit": True, "train.use_gpu": True, "train.zero_stage": 3},
     ["train.lora.quantize_4bit", "train.zero_stage=3"]),
    ({"train.lora.quantize_4bit": True, "train.use_gpu": True}, ["train.lora.r"]),
    ({"train.offload_params": True, "train.zero_stage": 2}, ["train.offload_params", "train.zero_stage"]),
    ({"train.offload_optimizer": True, "train.zero_stage": 0}, ["train.offload_optimizer", "train.zero_stage"]),
    ({"train.sequence_parallel_size": 2, "model.attn_implementation": "sdpa"},
     ["train.sequence_parallel_size", "model.attn_implementation=sdpa"]),
]


@pytest.mark.parametrize("overrides,keys", REFUSALS, ids=[",".join(o) for o, _ in REFUSALS])
def test_unsupported_combinations_are_refused_at_validation_naming_the_keys(tmp_path, overrides, keys):
    from ray_rm.validation import validate

    cfg = tiny_config("unused-model", tmp_path, **overrides)
    with pytest.raises(UserError) as info:
        validate(cfg)
    assert all(k in str(info.value) for k in keys), str(info.value)


def test_supported_gpu_configs_pass_validation(tmp_path):
    from ray_rm.validation import validate

    for overrides in ({"train.use_gpu": True, "model.attn_implementation": "flash_attention_2", "model.dtype": "bfloat16"},
                      {"train.use_gpu": True, "model.dtype": "float16"},
                      {"train.use_gpu": True, "train.lora.r": 8, "train.lora.quantize_4bit": True, "train.zero_stage": 2},
                      {"model.dtype": "bfloat16"}):
        validate(tiny_config("unused-model", tmp_path, **overrides))


# ----------------------------------------------------------------------------------------------------
# Real DeepSpeed in a spawned single-rank gloo process group, through ray_rm's engine, step and export code.
# ----------------------------------------------------------------------------------------------------
def _ds_worker(init_file, model_dir, rows, out_dir, overrides):
    import torch.distributed as dist

    from ray_rm.config import load_config
    from ray_rm.config_schema import TrainJobConfig
    from ray_rm.losses import LossSettings
    from ray_rm.model.build import resolve_dtype
    from ray_rm.train import checkpointing
    from ray_rm.train.deepspeed_setup import initialize
    from ray_rm.train.step import StepContext, train_step

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")  # what Ray Train (or torchrun) sets for DeepSpeed
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=0, world_size=1)
    cfg = load_config(TrainJobConfig, None, [f"{k}={v}" for k, v in overrides.items()])
    model = build_reward_model(cfg.model, cfg.train.lora, seed=3)
    dtype = resolve_dtype(cfg.model.dtype, "cpu")
    engine, _ = initialize(model, cfg.train, len(rows), dtype, 1)
    ctx = StepContext(engine=engine, device=torch.device("cpu"), settings=LossSettings("bt"), world_size=1, sp=None,
                      sp_size=1, pad_token_id=0, pack_tokens=1024)
    losses = [train_step(ctx, [row])["loss"] for row in rows]
    engine.eval()
    with torch.no_grad():
        trained_rewards = engine(collate_row(rows[0])).rewards
    weights = checkpointing.gathered_state_dict(engine, trainable_only=False)
    hf = checkpointing.export_final(weights, cfg.model, cfg.train.lora, model_dir, str(Path(out_dir) / "hf"),
                                    {"append_eos": True, "chat_template": "auto", "max_length": 1024})
    torch.save({"losses": losses, "optimizer": type(engine.basic_optimizer).__name__, "weights": weights,
                "module_dtype": str(next(engine.module.parameters()).dtype), "trained_rewards": trained_rewards,
                "stage": engine.zero_optimization_stage(), "hf": hf}, Path(out_dir) / "result.pt")
    dist.destroy_process_group()


def run_deepspeed(model_dir, rows, out_dir, **overrides) -> dict:
    overrides = {"model.name_or_path": model_dir, "train.lr": 1e-2, "train.warmup_ratio": 0.0, **overrides}
    proc = mp.get_context("spawn").Process(target=_ds_worker, args=(tempfile.mktemp(dir=out_dir), model_dir, rows,
                                                                    out_dir, overrides))
    proc.start()
    proc.join(timeout=600)
    assert proc.exitcode == 0, proc.exitcode
    return torch.load(Path(out_dir) / "result.pt", weights_only=False)


@pytest.mark.slow  # DeepSpeed in a spawned process: ~40 s
def test_bf16_deepspeed_trains_fp32_masters_and_exports_them(tiny_decoder_dir, tmp_path):
    from ray_rm.model.build import load_reward_model

    rows = list(pack_groups(random_groups(12, seed=9), 300, True, 64))[:3]
    res = run_deepspeed(tiny_decoder_dir, rows, tmp_path, **{"model.dtype": "bfloat16", "train.zero_stage": 0})
    assert res["module_dtype"] == "torch.bfloat16" and res["stage"] == 1  # mixed precision keeps ZeRO's masters
    assert all(torch.isfinite(torch.tensor(res["losses"])))
    head = res["weights"]["head.weight"]
    assert head.dtype == torch.float32 and not is_bf16_exact(head)  # the fp32 master, not the bf16 module copy
    assert not is_bf16_exact(res["weights"]["backbone.layers.0.mlp.up_proj.weight"])
    # served in bf16, the export reproduces the trained model's rewards (same bf16 backbone, fp32 head math)
    served = load_reward_model(res["hf"], dtype="bfloat16")
    with torch.no_grad():
        again = served(collate_row(rows[0])).rewards
    assert torch.allclose(again, res["trained_rewards"], atol=2e-2, rtol=1e-2)


@pytest.mark.slow  # DeepSpeed in a spawned process; the first run JIT-builds CPU Adam (~2.5 min)
def test_optimizer_offload_steps_with_deepspeed_cpu_adam(tiny_decoder_dir, tmp_path):
    rows = list(pack_groups(random_groups(12, seed=9), 300, True, 64))[:2]
    res = run_deepspeed(tiny_decoder_dir, rows, tmp_path, **{"train.zero_stage": 2, "train.offload_optimizer": True})
    assert res["optimizer"] == "DeepSpeedCPUAdam"
    assert all(torch.isfinite(torch.tensor(res["losses"])))


def test_fp16_trains_with_dynamic_loss_scaling_and_fp32_masters():
    """DeepSpeed's own config parser reads fp16 with loss_scale 0 (dynamic), and mixed precision never runs
    ZeRO stage 0 (whose fp16 optimizer would hide the fp32 masters from the export)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    from ray_rm.config_schema import TrainConfig
    from ray_rm.train.deepspeed_setup import deepspeed_config, effective_zero_stage

    tc = TrainConfig(zero_stage=0)
    fp16 = DeepSpeedConfig(deepspeed_config(tc, torch.float16)).float16_config
    assert fp16.enabled and fp16.loss_scale == 0 and fp16.initial_scale_power == 16
    assert not DeepSpeedConfig(deepspeed_config(tc, torch.bfloat16)).float16_config.enabled
    assert [effective_zero_stage(tc, 1, d) for d in (torch.float16, torch.bfloat16, torch.float32)] == [1, 1, 0]
