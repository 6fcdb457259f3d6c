"""Fast tests of the vLLM-compatible pooling bodies and the trainer adapters' item building (no Ray, no model).

The live routes, verl's own client code and TRL's call site are tested in test_integrations.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from ray_rm.errors import UserError
from ray_rm.integrations.trl import AsyncRayRMReward, RayRMReward, completion_items
from ray_rm.integrations.verl import client_for, score_item
from ray_rm.serve import vllm_api as V
from ray_rm.serve.inputs import InputError, Item

TEXT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"


def test_classify_input_forms_become_items_scored_as_given():
    call = V.parse_classify({"model": "/ckpt/path", "input": TEXT, "use_activation": False}, max_items=8)
    assert call.request.items == (Item("", TEXT),) and call.activation is False and call.model == "/ckpt/path"
    many = V.parse_classify({"input": ["a", "b"]}, max_items=8, normalize=True, clip=2.0)
    assert [it.response for it in many.request.items] == ["a", "b"]
    assert many.request.normalize is True and many.request.clip == 2.0 and many.model is None
    ids = V.parse_classify({"input": [5, 6, 7]}, max_items=8)
    assert ids.request.items == (Item(input_ids=(5, 6, 7)),)
    both = V.parse_classify({"input": [[5, 6], "x"]}, max_items=8)
    assert both.request.items == (Item(input_ids=(5, 6)), Item("", "x"))
    chat = V.parse_classify({"messages": [{"role": "user", "content": "hi"}]}, max_items=8)
    assert chat.request.items == (Item((), (("user", "hi"),)),)
    bare = V.parse_classify({"input": ["a", [5]], "add_special_tokens": False}, max_items=8)  # newer verl sends it
    assert bare.request.items == (Item("", "a", add_special_tokens=False), Item(input_ids=(5,)))


@pytest.mark.parametrize("flags, expected", [
    ({}, True),  # vLLM's classify default: use_activation=True
    ({"use_activation": False}, False), ({"activation": False}, False), ({"softmax": False}, False),
    ({"use_activation": None}, True),
    ({"softmax": True, "activation": False, "use_activation": False}, True),  # vLLM's precedence
    ({"activation": True, "use_activation": False}, True),
])
def test_activation_flags_follow_vllm(flags, expected):
    assert V.parse_classify({"input": "x", **flags}, max_items=2).activation is expected


@pytest.mark.parametrize("body, status, fragment", [
    ("x", 422, "JSON object"),
    ({}, 422, "exactly one of 'input'"),
    ({"input": "x", "messages": []}, 422, "exactly one of"),
    ({"input": ""}, 422, "input: is empty"),
    ({"input": []}, 422, "'input' is empty"),
    ({"input": ["a", 3.5]}, 422, "input[1]"),
    ({"input": [1, -1]}, 422, "input[1]"),
    ({"input": ["a"] * 5}, 413, "limit is 4"),
    ({"input": "x", "use_activation": "no"}, 422, "'use_activation' must be true or false"),
    ({"input": "x", "temperature": 1}, 422, "unknown field"),
    ({"input": "x", "model": 3}, 422, "'model' must be a string"),
    ({"input": "x", "add_special_tokens": "no"}, 422, "'add_special_tokens' must be true or false"),
    ({"input": "x", "truncate_prompt_tokens": 5}, 422, "truncate_prompt_tokens"),
])
def test_bad_classify_bodies_are_4xx_naming_the_field(body, status, fragment):
    with pytest.raises(InputError) as err:
        V.parse_classify(body, max_items=4)
    assert err.value.status == status and fragment in str(err.value)


def test_embeddings_and_pooling_bodies():
    emb = V.parse_embeddings({"model": "m", "input": "x", "encoding_format": "float"}, max_items=2)
    assert emb.activation is False  # SGLang returns the raw reward as the embedding
    with pytest.raises(InputError, match="encoding_format"):
        V.parse_embeddings({"input": "x", "encoding_format": "base64"}, max_items=2)
    with pytest.raises(InputError, match="dimensions"):
        V.parse_embeddings({"input": "x", "dimensions": 4}, max_items=2)
    with pytest.raises(InputError, match="unknown field"):
        V.parse_embeddings({"input": "x", "use_activation": True}, max_items=2)
    assert V.parse_pooling({"input": "x", "task": "classify"}, max_items=2).activation is True
    with pytest.raises(InputError, match="'task'"):
        V.parse_pooling({"input": "x", "task": "embed"}, max_items=2)


def test_responses_have_vllm_shapes_and_values():
    out = {"rewards": [0.0, 2.0, -800.0], "raw_rewards": [0.0, 2.0, -800.0], "model": "hf", "num_tokens": [3, 4, 5]}
    on = V.parse_classify({"input": ["a", "b", "c"]}, max_items=4)
    off = V.parse_classify({"model": "/p", "input": ["a", "b", "c"], "use_activation": False}, max_items=4)
    r = V.classify_response(on, out, "LABEL_0")
    assert set(r) == {"id", "object", "created", "model", "data", "usage"}
    assert r["id"].startswith("classify-") and r["object"] == "list" and isinstance(r["created"], int)
    assert r["model"] == "hf" and V.classify_response(off, out, None)["model"] == "/p"
    assert [set(d) for d in r["data"]] == [{"index", "label", "probs", "num_classes"}] * 3
    assert [d["index"] for d in r["data"]] == [0, 1, 2] and r["data"][0]["label"] == "LABEL_0"
    assert [d["probs"][0] for d in r["data"]] == pytest.approx([0.5, 1 / (1 + math.exp(-2.0)), 0.0])
    assert all(d["num_classes"] == 1 for d in r["data"])
    assert [d["probs"] for d in V.classify_response(off, out, None)["data"]] == [[0.0], [2.0], [-800.0]]
    assert r["usage"] == {"prompt_tokens": 12, "total_tokens": 12, "completion_tokens": 0,
                          "prompt_tokens_details": None}
    emb = V.embeddings_response(V.parse_embeddings({"input": ["a", "b", "c"]}, 4), out)
    assert emb["data"][-1] == {"index": 2, "object": "embedding", "embedding": [-800.0]}
    pool = V.pooling_response(on, out)
    assert pool["id"].startswith("pool-") and pool["data"][1]["data"] == pytest.approx([r["data"][1]["probs"][0]])


def test_served_label_reads_id2label():
    class Cfg:
        id2label = {0: "LABEL_0"}
    assert V.served_label(Cfg()) == "LABEL_0" and V.served_label(object()) is None


# ------------------------------------------------------------------------------------------ adapters
def test_trl_items_conversational_and_plain():
    prompts = [[{"role": "user", "content": "2+2?"}]]
    completions = [[{"role": "assistant", "content": "4", "tool_calls": None}]]
    assert completion_items(prompts, completions) == [
        {"prompt": [{"role": "user", "content": "2+2?"}], "response": [{"role": "assistant", "content": "4"}]}]
    assert completion_items(["Q: 2+2? A:"], [" 4"]) == [{"prompt": "Q: 2+2? A:", "response": " 4"}]
    with pytest.raises(UserError, match="both be text or both"):
        completion_items(["Q"], [[{"role": "assistant", "content": "4"}]])
    with pytest.raises(UserError, match="1 prompts for 2"):
        completion_items(["Q"], ["a", "b"])


def test_trl_reward_objects_are_named_and_async_is_a_coroutine_function():
    import inspect
    import pickle

    sync, asyn = RayRMReward("http://127.0.0.1:1", name="rm"), AsyncRayRMReward("http://127.0.0.1:1")
    assert sync.__name__ == "rm" and asyn.__name__ == "ray_rm"
    assert inspect.iscoroutinefunction(asyn.__call__) and not inspect.iscoroutinefunction(sync.__call__)
    assert pickle.loads(pickle.dumps(sync)).client.url == "http://127.0.0.1:1"


def test_verl_items_from_extra_info():
    chat = np.array([{"role": "user", "content": "hi"}], dtype=object)  # verl's object column
    assert score_item("hello", {"prompt": chat}) == {
        "prompt": [{"role": "user", "content": "hi"}], "response": [{"role": "assistant", "content": "hello"}]}
    assert score_item(" 4", {"question": "2+2?"}, prompt_key="question") == {"prompt": "2+2?", "response": " 4"}
    with pytest.raises(UserError, match=r"extra_info has no 'prompt' \(keys: \['index'\]\)"):
        score_item("x", {"index": 3})
    with pytest.raises(UserError, match="must be text or a list"):
        score_item("x", {"prompt": 5})


def test_verl_client_needs_a_url_and_is_shared(monkeypatch):
    monkeypatch.delenv("RAY_RM_URL", raising=False)
    with pytest.raises(UserError, match="RAY_RM_URL"):
        client_for(None)
    monkeypatch.setenv("RAY_RM_URL", "http://127.0.0.1:9")
    assert client_for() is client_for("http://127.0.0.1:9") and client_for().url == "http://127.0.0.1:9"
