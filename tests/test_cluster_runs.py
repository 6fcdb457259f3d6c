"""Every training and serving config shipped in cluster/ runs to the end on CPU.

Only what cannot exist on a 2-core CPU machine is overridden, each key with its reason:

  train (cluster/kuberay/rayjob-train.yaml's ConfigMap)
    train.use_gpu=false                      GPU-only
    model.name_or_path, output_dir, train.storage_path, data.train_files, data.eval_files
                                             paths on the cluster's shared volume (/mnt/shared)
    train.num_workers=2, train.cpus_per_worker=1, data.tokenize_actors=1
                                             8 GPU workers x 4 CPUs do not fit 2 cores
    data.limit=24                            keeps the run small: one packed 16384-token row of training
                                             pairs and one of eval pairs, so there are still fewer eval
                                             rows than workers, as with the full 200 test pairs on 8 GPUs
  kept as shipped: model.dtype=bfloat16 (DeepSpeed bf16 runs on CPU), attention auto, pack_tokens 16384,
  max_length 2048, ZeRO-2, eval_every / checkpoint_every (step-0 and final eval, final checkpoint + export).

  serve (cluster/serve_rm.yaml and the RayService's serveConfigV2), deployed through Serve's Python API
  with each application's import_path and args:
    serve.model_path                         the checkpoint the training run above exported
    serve.num_gpus=0                         GPU-only
    serve.num_cpus=1                         4 CPUs per replica do not fit 2 cores
    http_options.host=127.0.0.1, port        the RayService binds 0.0.0.0; tests never open outside ports
"""
from __future__ import annotations

import importlib
import socket
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import HH_TEST, HH_TRAIN, REPO
from train_helpers import eval_accuracy_by_transformers

pytestmark = pytest.mark.slow

CLUSTER = REPO / "cluster"


def _train_yaml() -> str:
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "rayjob-train.yaml").read_text()) if d]
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    return config_map["data"]["train.yaml"]


def _serve_configs() -> dict:
    local = yaml.safe_load((CLUSTER / "serve_rm.yaml").read_text())
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "rayservice.yaml").read_text()) if d]
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    return {"serve_rm.yaml": local, "rayservice.yaml": yaml.safe_load(service["spec"]["serveConfigV2"])}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def trained_by_rayjob_config(ray_local, tiny_decoder_dir, tmp_path_factory):
    from ray_rm.config import load_config
    from ray_rm.config_schema import TrainJobConfig
    from ray_rm.train.driver import run_training

    tmp = tmp_path_factory.mktemp("rayjob")
    (tmp / "train.yaml").write_text(_train_yaml())
    overrides = {"train.use_gpu": False, "model.name_or_path": tiny_decoder_dir, "output_dir": tmp / "out",
                 "train.storage_path": tmp / "storage", "data.train_files": HH_TRAIN, "data.eval_files": HH_TEST,
                 "train.num_workers": 2, "train.cpus_per_worker": 1, "data.tokenize_actors": 1, "data.limit": 24}
    cfg = load_config(TrainJobConfig, str(tmp / "train.yaml"), [f"{k}={v}" for k, v in overrides.items()])
    assert (cfg.model.dtype, cfg.data.pack_tokens, cfg.train.zero_stage) == ("bfloat16", 16384, 2)
    return cfg, run_training(cfg)


def test_rayjob_train_config_runs_to_a_loadable_checkpoint(trained_by_rayjob_config):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ray_rm.scoring import RewardScorer

    cfg, summary = trained_by_rayjob_config
    # the small data set is split so that both workers stream rows of their own; the run lasts as long as the
    # longer shard
    per_rank = summary["data"]["train_rows_per_dp_rank"]
    assert len(per_rank) == 2 and min(per_rank) >= 1 and sum(per_rank) == summary["data"]["train_rows_packed"]
    assert summary["steps"] == max(per_rank)
    # the final eval ran over the eval pairs: its accuracy is plain transformers' on the export (fp32 here, bf16
    # in training: one near-tie may flip)
    accuracy, pairs = eval_accuracy_by_transformers(cfg, summary["hf_checkpoint"])
    assert pairs >= 10 and summary["final_metrics"]["eval/rm/accuracy"] == pytest.approx(accuracy, abs=1.01 / pairs)
    hf = summary["hf_checkpoint"]
    clf = AutoModelForSequenceClassification.from_pretrained(hf).eval()
    tok = AutoTokenizer.from_pretrained(hf)
    scorer = RewardScorer(hf)
    items = [("\n\nHuman: Is it safe to pet a bee?\n\nAssistant:", " No, it may sting you."), ("", "Hello there")]
    texts = [tok.decode(ids) for ids in scorer.encode(items)]
    with torch.no_grad():
        theirs = clf(**tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")).logits[:, 0].tolist()
    assert max(abs(a - b) for a, b in zip(scorer.score(items), theirs)) < 1e-4


@pytest.mark.parametrize("name", ["serve_rm.yaml", "rayservice.yaml"])
def test_shipped_serve_configs_serve_the_trained_checkpoint(trained_by_rayjob_config, name):
    from ray import serve

    from ray_rm.scoring import RewardScorer

    hf = trained_by_rayjob_config[1]["hf_checkpoint"]
    config = _serve_configs()[name]
    (app,) = config["applications"]
    args = {"serve": {**app["args"]["serve"], "model_path": hf, "num_gpus": 0, "num_cpus": 1}}
    module, attr = app["import_path"].split(":")
    port = _free_port()
    serve.start(http_options={**config["http_options"], "host": "127.0.0.1", "port": port})
    try:
        serve.run(getattr(importlib.import_module(module), attr)(args), name=app["name"],
                  route_prefix=app["route_prefix"])
        texts = ["\n\nHuman: Is it safe to pet a bee?\n\nAssistant: No, it may sting you.", "Hello there"]
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/score", json={"inputs": [{"text": t} for t in texts]},
                            timeout=120)
        assert answer.status_code == 200, answer.text
        expected = RewardScorer(hf).score([("", t) for t in texts])
        assert max(abs(a - b) for a, b in zip(answer.json()["rewards"], expected)) < 1e-4
    finally:
        serve.shutdown()
