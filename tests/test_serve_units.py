"""Fast tests of the serving core without Ray: request validation, token batching, ensemble math,
the engine against an independent AutoModelForSequenceClassification forward, config and app options."""
from __future__ import annotations

import asyncio
import json
import threading

import pytest

from ray_rm.scoring import RewardStats
from ray_rm.scoring.grouping import plan_groups
from ray_rm.serve.batcher import TokenBatcher
from ray_rm.serve.config import ServeConfig, ServeJobConfig
from ray_rm.serve.scoring_engine import combine
from ray_rm.serve.inputs import (
    InputError,
    Item,
    parse_json,
    parse_openrlhf_request,
    parse_score_request,
)

# ------------------------------------------------------------------------------------------ inputs
CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def test_every_item_form_parses():
    req = parse_score_request({"inputs": [
        {"messages": CHAT}, {"prompt": "Q: 2+2?", "response": " 4"}, {"prompt": CHAT[:1], "response": "yo"},
        {"text": "plain"}, {"input_ids": [1, 2, 3]}], "normalize": True, "clip": 3}, max_items=10)
    a, b, c, d, e = req.items
    assert a == Item((), (("user", "hi"), ("assistant", "hello")))
    assert b == Item("Q: 2+2?", " 4")
    assert c == Item((("user", "hi"),), (("assistant", "yo"),))  # text response after a chat prompt: one turn
    assert d == Item("", "plain") and e.input_ids == (1, 2, 3)
    assert req.normalize is True and req.clip == 3.0


@pytest.mark.parametrize("body, status, fragment", [
    ([1], 422, "JSON object"),
    ({}, 422, "missing 'inputs'"),
    ({"inputs": []}, 422, "empty"),
    ({"inputs": "text"}, 422, "must be a list"),
    ({"inputs": [{"text": "a"}], "normalise": True}, 422, "unknown field"),
    ({"inputs": [{"text": "a"}], "normalize": "yes"}, 422, "'normalize'"),
    ({"inputs": [{"text": "a"}], "clip": -1}, 422, "'clip'"),
    ({"inputs": [{"text": ""}]}, 422, "inputs[0].text: is empty"),
    ({"inputs": [{"text": 5}]}, 422, "expected a string"),
    ({"inputs": [{"text": "\ud800x"}]}, 422, "surrogate"),
    ({"inputs": [{"respone": "a", "prompt": "b"}]}, 422, "got keys"),
    ({"inputs": [{"text": "a", "input_ids": [1]}]}, 422, "got keys"),
    ({"inputs": [{"input_ids": [1, -2]}]}, 422, "input_ids[1]"),
    ({"inputs": [{"input_ids": [1, 2.5]}]}, 422, "non-negative integers"),
    ({"inputs": [{"input_ids": [True]}]}, 422, "non-negative integers"),
    ({"inputs": [{"input_ids": []}]}, 422, "non-empty list"),
    ({"inputs": [{"messages": [{"role": "wizard", "content": "x"}]}]}, 422, "unknown role"),
    ({"inputs": [{"messages": [{"role": "user"}]}]}, 422, "no 'content'"),
    ({"inputs": [{"messages": []}]}, 422, "non-empty list"),
    ({"inputs": [{"prompt": "", "response": ""}]}, 422, "both empty"),
    ({"inputs": [None]}, 422, "expected an object"),
    ({"inputs": [{"text": "a"}] * 11}, 413, "limit is 10"),
])
def test_invalid_requests_name_the_problem(body, status, fragment):
    with pytest.raises(InputError) as err:
        parse_score_request(body, max_items=10)
    assert err.value.status == status and fragment in str(err.value)


def test_body_decoding_errors_are_4xx():
    assert parse_json(b'{"a": 1}', 100) == {"a": 1}
    for body, status in ((b"{", 400), (b"", 400), (b"\xff\xfe\x00", 400), (b"[" * 5000 + b"]" * 5000, 400),
                         (b"x" * 101, 413)):
        with pytest.raises(InputError) as err:
            parse_json(body, 100 if status == 413 else 10**6)
        assert err.value.status == status


def test_openrlhf_body():
    req = parse_openrlhf_request({"query": ["a b", "c"], "prompts": ["a"], "labels": [None]}, max_items=4)
    assert [it.response for it in req.items] == ["a b", "c"] and req.field == "query"
    with pytest.raises(InputError, match="query"):
        parse_openrlhf_request({"prompts": ["a"]}, max_items=4)
    with pytest.raises(InputError, match=r"query\[1\]"):
        parse_openrlhf_request({"query": ["a", 7]}, max_items=4)


# ------------------------------------------------------------------------------------------ batching
def test_plan_groups_dedups_and_shares_prefixes():
    p = list(range(100, 140))  # a 40-token prompt
    seqs = [p + [1, 2], [7, 8, 9], p + [3], p + [1, 2], p + [4, 5, 6]]
    groups, rep = plan_groups(seqs, share_prefix=True, min_shared=16, max_group_tokens=4096)
    assert rep == [0, 1, 2, 0, 4]  # the duplicate is scored once
    assert sorted(map(sorted, groups)) == [[0, 2, 4], [1]]
    groups, _ = plan_groups(seqs, share_prefix=False)
    assert sorted(map(sorted, groups)) == [[0], [1], [2], [4]]
    groups, _ = plan_groups(seqs, share_prefix=True, min_shared=16, max_group_tokens=45)  # budget splits them
    assert all(sum(len(seqs[i]) for i in g) - 40 * (len(g) - 1) <= 45 for g in groups) and len(groups) == 3


class Recorder:
    """A deterministic stand-in model: reward = sum of token ids; records every forward's groups."""

    def __init__(self, delay: float = 0.0):
        self.calls, self.delay = [], delay
        self.event = threading.Event()

    def __call__(self, groups):
        self.calls.append(groups)
        if self.delay:
            self.event.wait(self.delay)
        return [[float(sum(s)) for s in g] for g in groups]


def test_batcher_merges_concurrent_requests_within_the_token_budget():
    rec = Recorder(delay=0.2)
    batcher = TokenBatcher(rec, batch_tokens=64, wait_s=0.02, share_prefix=False)

    async def main():
        first = asyncio.ensure_future(batcher.score([[1] * 10]))  # runs alone while the rest queue up
        await asyncio.sleep(0.05)
        rest = [batcher.score([[i] * 10, [i, i]]) for i in range(2, 12)]
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(main())
    assert first == [10.0]
    assert rest == [[10.0 * i, 2.0 * i] for i in range(2, 12)]  # every caller gets its own rewards in order
    sizes = [sum(len(s) for g in call for s in g) for call in rec.calls]
    assert len(rec.calls) < 11 and all(n <= 64 for n in sizes)  # batched across requests, within budget
    batcher.close()


def test_batcher_splits_a_request_larger_than_the_budget_and_survives_model_errors():
    calls = []

    def flaky(groups):
        calls.append(groups)
        if any(s == [666] for g in groups for s in g):
            raise RuntimeError("model exploded")
        return [[float(len(s)) for s in g] for g in groups]

    batcher = TokenBatcher(flaky, batch_tokens=10, wait_s=0.0, share_prefix=False)

    async def main():
        big = await batcher.score([[1] * 6, [1] * 6, [1] * 3])
        with pytest.raises(RuntimeError, match="exploded"):
            await batcher.score([[666]])
        batcher.check()  # the loop is still alive after a failed batch
        return big, await batcher.score([[5, 5]])

    big, after = asyncio.run(main())
    assert big == [6.0, 6.0, 3.0] and after == [2.0]
    assert all(sum(len(s) for g in c for s in g) <= 10 for c in calls)
    batcher.close()


def test_batcher_close_fails_waiting_callers():
    from ray_rm.serve.batcher import BatcherClosed

    rec = Recorder(delay=5.0)
    batcher = TokenBatcher(rec, batch_tokens=4, wait_s=0.0)

    async def main():
        busy = asyncio.ensure_future(batcher.score([[1, 2, 3, 4]]))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(batcher.score([[9, 9, 9, 9]]))
        await asyncio.sleep(0.05)
        batcher.close()
        rec.event.set()
        with pytest.raises(BatcherClosed):
            await waiting
        busy.cancel()

    asyncio.run(main())
    with pytest.raises(BatcherClosed):
        batcher.check()


# ------------------------------------------------------------------------------------------ ensemble math
def test_combine_single_and_ensemble():
    stats = [RewardStats(1.0, 2.0), RewardStats(0.0, 1.0)]
    one = combine([[3.0, -1.0]], stats[:1], normalize=True, penalty=1.0, clip=0.0)
    assert one["rewards"] == [1.0, -1.0] and one["raw_rewards"] == [3.0, -1.0] and "ensemble" not in one
    two = combine([[3.0, 5.0], [2.0, 0.0]], stats, normalize=True, penalty=0.5, clip=0.0)
    # normalized members: [1, 2] and [2, 0]; mean [1.5, 1], std [0.5, 1]
    assert two["ensemble"]["mean"] == [1.5, 1.0] and two["ensemble"]["std"] == [0.5, 1.0]
    assert two["rewards"] == [1.25, 0.5] and two["raw_rewards"] == [2.5, 2.5]
    clipped = combine([[3.0, -9.0]], stats[1:], normalize=False, penalty=1.0, clip=2.0)
    assert clipped["rewards"] == [2.0, -2.0]
    # the default penalty is the documented k = 1: reward = mean - std
    default = combine([[3.0, 5.0], [2.0, 0.0]], stats, normalize=True, penalty=ServeConfig().ensemble_penalty, clip=0.0)
    assert default["rewards"] == [1.0, 0.0]


# ------------------------------------------------------------------------------------------ engine (real model)
def _reference(model_dir: str, texts_or_chats: list) -> list[float]:
    """Independent reward: AutoModelForSequenceClassification on the documented tokenization rules."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    out = []
    for x in texts_or_chats:
        if isinstance(x, str):
            ids = tok(x)["input_ids"]
        else:
            ids = tok.apply_chat_template(x, tokenize=True)["input_ids"]
        with torch.no_grad():
            out.append(model(torch.tensor([ids])).logits[0, 0].item())
    return out


def test_engine_matches_automodel_and_batches_requests(exported_tiny_rm):
    from ray_rm.serve.scoring_engine import ScoringEngine

    engine = ScoringEngine(ServeConfig(model_path=exported_tiny_rm, batch_wait_ms=300))  # all 5 join one wait
    prompt = "\n\nHuman: Tell me a long story about a lighthouse keeper and a storm.\n\nAssistant:"
    texts = [prompt + " Once upon a time.", prompt + " No.", "short text", prompt + " Once upon a time."]
    chat = CHAT

    async def main():
        reqs = [parse_score_request({"inputs": [{"text": t}]}, 8) for t in texts]
        reqs.append(parse_score_request({"inputs": [{"messages": chat}], "normalize": True}, 8))
        return await asyncio.gather(*(engine.score(r) for r in reqs))

    outs = asyncio.run(main())
    ref = _reference(exported_tiny_rm, texts + [chat])
    got = [o["raw_rewards"][0] for o in outs]
    assert max(abs(a - b) for a, b in zip(got, ref)) < 1e-4
    assert abs(outs[-1]["rewards"][0] - (ref[-1] - 0.25) / 2.0) < 1e-4
    stats = engine.batchers[0].stats
    assert stats["batches"] < 5 and stats["distinct"] == 4  # 5 requests, one duplicate, batched together
    with pytest.raises(InputError, match=r"inputs\[0\]: token id 999999"):
        asyncio.run(engine.score(parse_score_request({"inputs": [{"input_ids": [5, 999999]}]}, 8)))
    with pytest.raises(InputError, match=r"query\[0\]: .* tokens > the limit"):
        asyncio.run(engine.score(parse_openrlhf_request({"query": ["word " * 1100]}, 8)))
    engine.close()


def test_engine_truncate_left_keeps_the_reward_token(exported_tiny_rm):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ray_rm.serve.scoring_engine import ScoringEngine

    engine = ScoringEngine(ServeConfig(model_path=exported_tiny_rm, overlength="truncate_left"))
    text = "start " + "word " * 1100 + "end"
    out = asyncio.run(engine.score(parse_score_request({"inputs": [{"text": text}]}, 8)))
    engine.close()
    tok = AutoTokenizer.from_pretrained(exported_tiny_rm)
    ids = tok(text)["input_ids"][-1024:]
    model = AutoModelForSequenceClassification.from_pretrained(exported_tiny_rm).eval()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0, 0].item()
    assert abs(out["rewards"][0] - expected) <= 1e-4


def test_vllm_add_special_tokens_false_is_honoured(tmp_path, tiny_encoder_dir):
    """An encoder RM's tokenizer adds [CLS]/[SEP]: the two values of vLLM's flag give different sequences, and
    each is scored exactly as plain transformers scores tokenizer(text, add_special_tokens=<flag>)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ray_rm.config_schema import ModelConfig
    from ray_rm.model.build import build_reward_model
    from ray_rm.model.export import export_hf
    from ray_rm.serve import vllm_api
    from ray_rm.serve.scoring_engine import ScoringEngine

    path = export_hf(build_reward_model(ModelConfig(name_or_path=tiny_encoder_dir), seed=3), tiny_encoder_dir,
                     tmp_path / "hf", {"chat_template": "auto", "max_length": 256})
    engine = ScoringEngine(ServeConfig(model_path=str(path)))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    text = "is the sky blue? yes, on a clear day."
    got, expected = {}, {}
    for special in (True, False):
        call = vllm_api.parse_classify({"input": text, "add_special_tokens": special, "use_activation": False}, 4)
        got[special] = asyncio.run(engine.score(call.request))["rewards"][0]
        with torch.no_grad():
            ids = tok(text, add_special_tokens=special)["input_ids"]
            expected[special] = model(torch.tensor([ids])).logits[0, 0].item()
    engine.close()
    assert abs(expected[True] - expected[False]) > 1e-3  # the flag changes what is scored
    assert all(abs(got[s] - expected[s]) < 1e-4 for s in (True, False)), (got, expected)


# ------------------------------------------------------------------------------------------ config + app
def test_config_defaults_are_secure_and_listed_in_help(capsys):
    from ray_rm.cli import parse_job_config

    cfg = ServeConfig()
    assert cfg.host == "127.0.0.1" and cfg.auth_token == "" and cfg.max_items > 0 and cfg.max_body_mb > 0
    with pytest.raises(SystemExit):
        parse_job_config(ServeJobConfig, ["--help"], "serve")
    text = capsys.readouterr().out
    for key in ("serve.model_path", "serve.host", "serve.port", "serve.num_replicas", "serve.auth_token",
                "serve.ensemble_penalty", "serve.max_queued_requests", "ray.address"):
        assert key in text


def test_token_from_env(monkeypatch):
    monkeypatch.setenv("RAY_RM_SERVE_TOKEN", "from-env")
    assert ServeConfig().resolved_token() == "from-env"
    assert ServeConfig(auth_token="explicit").resolved_token() == "explicit"


def test_deployment_options_come_from_config(exported_tiny_rm):
    from ray_rm.errors import UserError
    from ray_rm.serve.app import deployment_options
    from ray_rm.validation import validate

    fixed = deployment_options(ServeConfig(model_path=exported_tiny_rm, num_replicas=3, num_gpus=1,
                                           max_ongoing_requests=7, max_queued_requests=9, retry_after_s=2))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert (fixed["max_ongoing_requests"], fixed["max_queued_requests"]) == (7, 9)
    assert fixed["backpressure_config"] == {"status_code": 503, "retry_after_s": 2.0}
    auto = deployment_options(ServeConfig(model_path=exported_tiny_rm, num_replicas=1, max_replicas=4))
    assert auto["autoscaling_config"]["max_replicas"] == 4 and "num_replicas" not in auto
    for bad in (ServeConfig(), ServeConfig(model_path="/nonexistent/rm"),
                ServeConfig(model_path=exported_tiny_rm, overlength="cut")):
        with pytest.raises(UserError):
            validate(bad)


def test_cluster_serve_config_is_a_valid_serve_deploy_file(exported_tiny_rm):
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from ray_rm.serve.app import app_builder

    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster" / "serve_rm.yaml").read_text())
    schema = ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(doc)
    assert schema.http_options.host == "127.0.0.1"
    app = doc["applications"][0]
    assert app["import_path"] == "ray_rm.serve.app:app_builder"
    args = json.loads(json.dumps(app["args"]))
    args["serve"]["model_path"] = exported_tiny_rm
    from ray import serve

    from ray_rm.config import ConfigError, from_dict
    from ray_rm.serve.app import deployment_options

    assert isinstance(app_builder(args), serve.Application)  # the args are valid ServeConfig keys, and pass validation
    cfg = from_dict(ServeConfig, args["serve"], "serve.")
    assert {k: getattr(cfg, k) for k in args["serve"]} == args["serve"]  # every key in the file reaches the config
    opts = deployment_options(cfg)  # max_replicas > num_replicas in the file: autoscaling, no fixed replica count
    assert opts["autoscaling_config"] == {"min_replicas": args["serve"]["num_replicas"],
                                          "max_replicas": args["serve"]["max_replicas"],
                                          "target_ongoing_requests": args["serve"]["target_ongoing_requests"]}
    assert "num_replicas" not in opts and opts["ray_actor_options"]["num_gpus"] == args["serve"]["num_gpus"]
    with pytest.raises(ConfigError, match="serve.model_pth"):
        app_builder({"serve": {"model_pth": "x"}})


def test_wait_until_healthy_stops_when_the_server_process_is_gone_or_never_answers():
    import socket

    from ray_rm.serve.client import RewardServerUnavailable, wait_until_healthy

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(RewardServerUnavailable, match="stopped before"):
        wait_until_healthy(url, timeout_s=60, still_starting=lambda: False)
    with pytest.raises(RewardServerUnavailable, match="did not become healthy"):
        wait_until_healthy(url, timeout_s=0.2)
