"""Serving a process reward model: ``/v1/score`` with ``{"prompt" | "messages", "steps"}`` items answers
``step_rewards`` (equal to plain ``AutoModelForTokenClassification`` at the step ends) and ``rewards``
(their aggregate, chosen by request or config); concurrent requests share batches and prompts. The
engine is tested without Ray; one slow test runs the real Serve app over HTTP and through RewardClient's
handle."""
from __future__ import annotations

import asyncio
import functools

import httpx
import pytest
import torch

from ray_rm.eval.prm_metrics import aggregate
from ray_rm.serve.config import ServeConfig
from ray_rm.serve.inputs import InputError, parse_score_request

PROBLEM = "Start with 17, add 8, subtract 5, then multiply by 3."
SOLUTIONS = [["17 + 8 = 25", "25 - 5 = 20", "20 * 3 = 60"], ["17 + 8 = 25", "25 - 5 = 21", "21 * 3 = 63"],
             ["17 + 8 = 26", "26 - 5 = 21", "21 * 3 = 63"]]
ITEMS = [{"messages": [{"role": "user", "content": PROBLEM}], "steps": SOLUTIONS[0]},
         {"prompt": [{"role": "user", "content": PROBLEM}], "steps": SOLUTIONS[1]},
         {"prompt": PROBLEM + "\n", "steps": SOLUTIONS[2]}]


@functools.lru_cache(maxsize=2)
def _plain(path: str):
    import json

    from transformers import AutoModelForTokenClassification, AutoTokenizer

    sep = json.load(open(f"{path}/config.json"))["ray_rm"]["step_separator"]
    return (AutoTokenizer.from_pretrained(path), sep,
            AutoModelForTokenClassification.from_pretrained(path, dtype=torch.float32).eval())


def reference(path: str, items: list) -> list[list[float]]:
    """Step scores from plain transformers: the step_layout rule written out with the export's tokenizer."""
    tok, sep, clf = _plain(path)
    out = []
    for item in items:
        prompt = item.get("messages", item.get("prompt"))
        if isinstance(prompt, str):
            ids = tok(prompt)["input_ids"]
        else:
            ids = tok(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False),
                      add_special_tokens=False)["input_ids"]
        ends = []
        for step in item["steps"]:
            ids = ids + tok(step, add_special_tokens=False)["input_ids"] + tok(sep, add_special_tokens=False)["input_ids"]
            ends.append(len(ids) - 1)
        with torch.no_grad():
            out.append(clf(input_ids=torch.tensor([ids])).logits[0, ends, 0].tolist())
    return out


def test_step_items_parse_and_bad_ones_are_named():
    req = parse_score_request({"inputs": ITEMS, "aggregate": "prod"}, 8)
    assert req.aggregate == "prod" and req.items[2].steps == tuple(SOLUTIONS[2])
    assert req.items[0].prompt == (("user", PROBLEM),)
    for body, fragment in [({"inputs": [{"prompt": "p", "steps": []}]}, r"inputs\[0\].steps: expected a non-empty"),
                           ({"inputs": [{"prompt": "p", "steps": ["a", ""]}]}, r"inputs\[0\].steps\[1\]"),
                           ({"inputs": ITEMS, "aggregate": "max"}, "'aggregate' must be one of min, prod")]:
        with pytest.raises(InputError, match=fragment):
            parse_score_request(body, 8)


def test_engine_step_rewards_equal_plain_transformers_and_requests_share_batches(exported_tiny_prm):
    from ray_rm.serve.scoring_engine import ScoringEngine

    engine = ScoringEngine(ServeConfig(model_path=exported_tiny_prm, batch_wait_ms=300, min_shared_tokens=4))

    async def main():
        reqs = [parse_score_request({"inputs": [item]}, 8) for item in ITEMS]
        reqs.append(parse_score_request({"inputs": ITEMS[:2], "aggregate": "last"}, 8))
        return await asyncio.gather(*(engine.score(r) for r in reqs))

    outs = asyncio.run(main())
    ref = reference(exported_tiny_prm, ITEMS)
    got = [o["step_rewards"][0] for o in outs[:3]] + outs[3]["step_rewards"]
    for g, r in zip(got, ref + ref[:2]):
        assert g == pytest.approx(r, abs=1e-4)
    assert [o["rewards"][0] for o in outs[:3]] == pytest.approx([aggregate(r, "min") for r in ref], abs=1e-5)
    assert outs[0]["aggregate"] == "min" and outs[3]["aggregate"] == "last"
    assert outs[3]["rewards"] == pytest.approx([aggregate(r, "last") for r in ref[:2]], abs=1e-5)
    stats = engine.batchers[0].stats
    assert stats["batches"] < 4 and stats["distinct"] == 3  # 4 requests, 5 items, 3 distinct sequences
    with pytest.raises(InputError, match=r"inputs\[0\]: this is a process reward model"):
        asyncio.run(engine.score(parse_score_request({"inputs": [{"text": "hello"}]}, 8)))
    engine.close()


def test_a_scalar_model_refuses_step_items(exported_tiny_rm):
    from ray_rm.serve.scoring_engine import ScoringEngine

    engine = ScoringEngine(ServeConfig(model_path=exported_tiny_rm))
    with pytest.raises(InputError, match="'steps' items need a process reward model"):
        asyncio.run(engine.score(parse_score_request({"inputs": ITEMS[:1]}, 8)))
    engine.close()


@pytest.mark.slow
def test_served_step_rewards_over_http_and_the_handle_equal_plain_transformers(ray_local, exported_tiny_prm):
    from ray import serve

    from ray_rm.serve.app import build_app
    from ray_rm.serve.client import RewardClient
    from conftest import free_port

    port = free_port()
    cfg = ServeConfig(model_path=exported_tiny_prm, app_name="rm_prm", route_prefix="/prm", num_cpus=0.25,
                      torch_threads=1, batch_wait_ms=10, step_aggregate="mean")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
    try:
        ref = reference(exported_tiny_prm, ITEMS)
        r = httpx.post(f"http://127.0.0.1:{port}/prm/v1/score", json={"inputs": ITEMS}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        for got, want in zip(body["step_rewards"], ref):
            assert got == pytest.approx(want, abs=1e-4)
        assert body["aggregate"] == "mean"
        assert body["rewards"] == pytest.approx([aggregate(s, "mean") for s in ref], abs=1e-5)
        client = RewardClient(app_name="rm_prm", mode="handle")
        rewards, steps = client.score_steps(ITEMS, aggregate="prod")
        for got, want in zip(steps, ref):
            assert got == pytest.approx(want, abs=1e-4)
        assert rewards == pytest.approx([aggregate(s, "prod") for s in ref], abs=1e-5)
        client.close()
    finally:
        serve.delete("rm_prm")
        serve.shutdown()
