"""Peers' own code against a live Ray Serve app: verl's reward-loop client and custom-reward call site,
TRL's GRPOTrainer reward call site and one real GRPO step, and the vLLM-compatible routes' HTTP contract.

verl 0.9.1 is downloaded from PyPI at test time (tests/peer_sources.py; skipped with the pip error when
offline) and its functions run verbatim: ``RewardLoopWorker.compute_score_disrm`` / ``_preprocess_reward_inputs``
/ ``_post_request`` (reward_loop.py), ``get_custom_reward_fn`` + ``_call_with_kwargs[_async]`` (trainer/ppo/
reward.py), ``load_extern_object`` (utils/import_utils.py, imported whole), ``RewardManagerBase`` and
``NaiveRewardManager`` (reward_manager/base.py, naive.py). Every reward is checked against ``/v1/score`` of
the same content sent as an explicit item (<= 1e-4).
"""
from __future__ import annotations

import asyncio
import math
import socket
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from peer_sources import AttrDict, PeerBatch, load_defs, load_module_file, read_source, verl_row, verl_wheel

pytestmark = pytest.mark.slow

TOKEN = "eco-token"
REPO = Path(__file__).resolve().parents[1]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ANSWERS = ["Paris is the capital.", "I think it is Lyon."]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_local, exported_tiny_rm):
    from ray import serve

    from ray_rm.serve.app import build_app
    from ray_rm.serve.config import ServeConfig

    port = _free_port()
    common = dict(model_path=exported_tiny_rm, num_cpus=0.25, torch_threads=1, batch_wait_ms=10,
                  health_check_period_s=2.0, max_items=8, max_body_mb=0.05)
    apps = [ServeConfig(app_name="rm_v", route_prefix="/v", **common),
            ServeConfig(app_name="rm_va", route_prefix="/va", auth_token=TOKEN, **common)]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run_many([serve.RunTarget(build_app(c), name=c.app_name, route_prefix=c.route_prefix) for c in apps])
    yield f"127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def rm_tokenizer(exported_tiny_rm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(exported_tiny_rm)


@pytest.fixture(scope="module")
def policy_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def _v1_score(base: str, items: list, token: str | None = None) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.post(f"{base}/v1/score", json={"inputs": items}, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["rewards"]


def _post(url: str, body, token: str | None = None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(url, json=body, headers=headers, timeout=60, **kw)


def _close(a: list, b: list) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) <= 1e-4


# ------------------------------------------------------------------------------------------ the routes
def test_pooling_routes_match_v1_score(server):
    base = f"http://{server}/v"
    texts = ["<|im_start|>user\nhi<|im_end|>\n", "plain text to score"]
    want = _v1_score(base, [{"text": t} for t in texts])
    raw = _post(f"{base}/classify", {"model": "/any/path", "input": texts, "use_activation": False}).json()
    assert raw["model"] == "/any/path" and raw["object"] == "list" and raw["usage"]["prompt_tokens"] > 0
    assert [d["index"] for d in raw["data"]] == [0, 1] and all(d["num_classes"] == 1 for d in raw["data"])
    assert _close([d["probs"][-1] for d in raw["data"]], want)
    default = _post(f"{base}/v1/classify", {"input": texts}).json()  # vLLM's default: sigmoid
    assert default["model"] == "hf" and _close([d["probs"][0] for d in default["data"]],
                                               [1 / (1 + math.exp(-w)) for w in want])
    assert _post(f"{base}/classify", {"input": texts[0], "activation": False}).json()["data"][0]["probs"] == \
        pytest.approx([want[0]], abs=1e-4)
    emb = _post(f"{base}/v1/embeddings", {"model": "m", "input": texts}).json()
    assert _close([d["embedding"][-1] for d in emb["data"]], want)
    pool = _post(f"{base}/pooling", {"input": texts, "use_activation": False}).json()
    assert _close([d["data"][0] for d in pool["data"]], want)


def test_pooling_routes_share_auth_limits_and_4xx(server):
    base = f"http://{server}/va"
    r = _post(f"{base}/classify", {"input": "hi"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert _post(f"{base}/classify", {"input": "hi"}, token="wrong").status_code == 401
    assert _post(f"{base}/classify", {"input": "hi"}, token=TOKEN).status_code == 200
    assert _post(f"{base}/v1/embeddings", {"input": "hi"}).status_code == 401
    too_big = _post(f"{base}/classify", {"input": "x" * 60_000}, token=TOKEN)
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]
    too_many = _post(f"{base}/pooling", {"input": ["a"] * 9}, token=TOKEN)
    assert too_many.status_code == 413 and "limit is 8" in too_many.json()["error"]
    bad = _post(f"{base}/classify", {"input": ["ok", ""]}, token=TOKEN)
    assert bad.status_code == 422 and "input[1]" in bad.json()["error"]
    assert httpx.post(f"{base}/classify", content=b"{", timeout=30,
                      headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 400
    assert httpx.get(f"{base}/classify", timeout=30).status_code == 405


def test_concurrent_single_text_requests_are_all_answered_correctly(server):
    base = f"http://{server}/v"
    texts = [f"rollout number {i} says hello" for i in range(16)]
    want = _v1_score(base, [{"text": t} for t in texts[:8]]) + _v1_score(base, [{"text": t} for t in texts[8:]])
    with ThreadPoolExecutor(16) as pool:  # one text per request, as verl sends: the batcher merges them
        got = list(pool.map(lambda t: _post(f"{base}/classify", {"input": t, "use_activation": False})
                            .json()["data"][-1]["probs"][-1], texts))
    assert _close(got, want)


# ------------------------------------------------------------------------------------------ verl
def _verl_worker(wheel: Path, address: str, engine: str, rm_path: str, rm_tok, policy_tok):
    """verl's RewardLoopWorker with its state set directly (its __init__ loads reward managers and hub paths)."""
    import logging

    import aiohttp

    ns = load_defs(read_source(wheel, "verl/experimental/reward_loop/reward_loop.py"), ["RewardLoopWorker"],
                   {"asyncio": asyncio, "aiohttp": aiohttp, "logging": logging,
                    "logger": logging.getLogger("verl-peer")}, "verl/experimental/reward_loop/reward_loop.py")
    worker = object.__new__(ns["RewardLoopWorker"])
    worker.config = AttrDict({"reward": {"reward_model": {"rollout": {"name": engine}, "model_path": rm_path}}})
    worker.reward_router_address = address
    worker.input_tokenizer, worker.reward_model_tokenizer = policy_tok, rm_tok
    return worker


def test_verl_reward_loop_client_scores_through_classify_and_embeddings(server, exported_tiny_rm, rm_tokenizer,
                                                                      policy_tokenizer):
    wheel = verl_wheel()
    rows = [verl_row(policy_tokenizer, QUESTION, a) for a in ANSWERS]
    # what verl sends: the RM's chat template over prompt + response, its leading BOS string stripped
    texts = []
    for a in ANSWERS:
        text = rm_tokenizer.apply_chat_template(QUESTION + [{"role": "assistant", "content": a}], tokenize=False)
        bos = rm_tokenizer.bos_token  # None for SmolLM2's export (ray_rm_scoring.json: a template-only BOS)
        texts.append(text[len(bos):] if bos is not None and text.startswith(bos) else text)
    want = _v1_score(f"http://{server}/v", [{"text": t} for t in texts])
    # ...which is the trained sequence: the same rewards as the conversation itself (no hidden tokens)
    chats = [{"messages": QUESTION + [{"role": "assistant", "content": a}]} for a in ANSWERS]
    assert _close(want, _v1_score(f"http://{server}/v", chats))
    for engine in ("vllm", "sglang"):
        worker = _verl_worker(wheel, f"{server}/v", engine, exported_tiny_rm, rm_tokenizer, policy_tokenizer)

        async def score_all(worker=worker):
            return await asyncio.gather(*(worker.compute_score_disrm(PeerBatch([row])) for row in rows))

        got = [out["reward_score"] for out in asyncio.run(score_all())]
        assert _close(got, want), (engine, got, want)


@pytest.fixture
def verl_reward_call_site(monkeypatch):
    """verl's custom-reward loader and NaiveRewardManager, from the wheel."""
    wheel = verl_wheel()
    import_utils = load_module_file(wheel, "verl/utils/import_utils.py", "verl.utils.import_utils")
    ray_utils = load_module_file(wheel, "verl/utils/ray_utils.py", "verl.utils.ray_utils")
    for name in ("verl", "verl.utils"):  # get_custom_reward_fn imports verl.utils.import_utils inside
        package = types.ModuleType(name)
        package.__path__ = []
        monkeypatch.setitem(sys.modules, name, package)
    monkeypatch.setitem(sys.modules, "verl.utils.import_utils", import_utils)
    import functools
    import inspect

    reward = load_defs(read_source(wheel, "verl/trainer/ppo/reward.py"),
                       ["_call_with_kwargs", "_call_with_kwargs_async", "get_custom_reward_fn"],
                       {"inspect": inspect, "partial": functools.partial}, "verl/trainer/ppo/reward.py")
    base = load_defs(read_source(wheel, "verl/experimental/reward_loop/reward_manager/base.py"),
                     ["RewardManagerBase"], {"ABC": object, "abstractmethod": lambda f: f,
                                             "get_event_loop": ray_utils.get_event_loop}, "base.py")
    naive = load_defs(read_source(wheel, "verl/experimental/reward_loop/reward_manager/naive.py"),
                      ["NaiveRewardManager"], {"inspect": inspect, "RewardManagerBase": base["RewardManagerBase"],
                                               "default_compute_score": None}, "naive.py",
                      strip_decorators=("register",))
    return reward["get_custom_reward_fn"], naive["NaiveRewardManager"]


def _verl_config(server: str, name: str, path: str = "pkg://ray_rm.integrations.verl") -> AttrDict:
    """verl's config after ``reward.custom_reward_function.{path,name}=...`` and ``+...reward_kwargs.*=...``."""
    return AttrDict({"reward": {"custom_reward_function": {
        "path": path, "name": name, "reward_kwargs": {"url": f"http://{server}/va", "token": TOKEN}}}})


def test_verl_custom_reward_function_through_naive_reward_manager(server, verl_reward_call_site, policy_tokenizer):
    get_custom_reward_fn, naive_manager = verl_reward_call_site
    want = _v1_score(f"http://{server}/va", [{"messages": QUESTION + [{"role": "assistant", "content": a}]}
                                              for a in ANSWERS], token=TOKEN)
    rows = [verl_row(policy_tokenizer, QUESTION, a, extra={"prompt": QUESTION}) for a in ANSWERS]
    file_path = str(REPO / "ray_rm" / "integrations" / "verl.py")  # verl loads either form
    for name, path in (("compute_score", file_path), ("compute_score_async", "pkg://ray_rm.integrations.verl")):
        fn = get_custom_reward_fn(_verl_config(server, name, path))

        async def run(fn=fn):  # verl builds the manager on the reward worker's running loop
            manager = naive_manager(config=None, tokenizer=policy_tokenizer, compute_score=fn)
            assert manager.is_async_reward_score is (name == "compute_score_async")
            return await asyncio.gather(*(manager.run_single(PeerBatch([row])) for row in rows))

        outs = asyncio.run(run())
        assert _close([o["reward_score"] for o in outs], want), name
        assert outs[0]["reward_extra_info"] == {"acc": outs[0]["reward_score"]}
    batch = get_custom_reward_fn(_verl_config(server, "compute_score_batch"))
    got = batch(data_sources=["x"] * 2, solution_strs=ANSWERS, ground_truths=[None] * 2,
                extra_infos=[{"prompt": QUESTION}] * 2)
    assert _close(got, want)
    with pytest.raises(Exception, match="extra_info has no 'prompt'"):
        get_custom_reward_fn(_verl_config(server, "compute_score"))(
            data_source="x", solution_str="y", ground_truth=None, extra_info={"index": 0})


# ------------------------------------------------------------------------------------------ TRL
class RecordingReward:
    """Keeps what TRL passed and what the adapter returned, to check TRL's own call end to end."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.__name__ = inner.__name__

    def __call__(self, prompts, completions, completion_ids=None, **columns):
        rewards = self.inner(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
        self.calls.append((prompts, completions, rewards))
        return rewards


@pytest.fixture(scope="module")
def grpo(server, smollm2_dir, tmp_path_factory):
    """TRL's GRPOTrainer on SmolLM2-135M with a sync and an async ray_rm reward (2 generations, 4 tokens)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from ray_rm.integrations.trl import AsyncRayRMReward, RayRMReward

    sync = RecordingReward(RayRMReward(f"http://{server}/va", token=TOKEN, mode="http", name="rm_sync"))
    asyn = AsyncRayRMReward(f"http://{server}/va", token=TOKEN, mode="http", name="rm_async")
    args = GRPOConfig(output_dir=str(tmp_path_factory.mktemp("grpo")), use_cpu=True, bf16=False, max_steps=1,
                      per_device_train_batch_size=2, num_generations=2, max_completion_length=4,
                      logging_steps=1, save_strategy="no", report_to=[], gradient_checkpointing=False, seed=0)
    data = Dataset.from_list([{"prompt": QUESTION}, {"prompt": [{"role": "user", "content": "Name a color."}]}])
    return GRPOTrainer(model=smollm2_dir, reward_funcs=[sync, asyn], args=args, train_dataset=data), sync


def test_trl_calculate_rewards_calls_the_adapters_sync_and_async(server, grpo):
    trainer, _ = grpo
    assert trainer._has_async_funcs  # TRL saw the async adapter as a coroutine function
    chat_prompts = [QUESTION, QUESTION]
    chat_completions = [[{"role": "assistant", "content": a}] for a in ANSWERS]
    inputs = [{"prompt": p, "extra_column": i} for i, p in enumerate(chat_prompts)]
    got = trainer._calculate_rewards(inputs, chat_prompts, chat_completions, [[1, 2], [3]])
    want = _v1_score(f"http://{server}/va", [{"messages": p + c} for p, c in zip(chat_prompts, chat_completions)],
                     token=TOKEN)
    assert got.shape == (2, 2) and _close(got[:, 0].tolist(), want) and _close(got[:, 1].tolist(), want)
    plain_prompts, plain_completions = ["Q: capital of France?\nA:"] * 2, [" Paris.", " Lyon."]
    got = trainer._calculate_rewards([{"prompt": p} for p in plain_prompts], plain_prompts, plain_completions,
                                     [[1], [2]])
    want = _v1_score(f"http://{server}/va", [{"text": p + c} for p, c in zip(plain_prompts, plain_completions)],
                     token=TOKEN)
    assert _close(got[:, 0].tolist(), want) and _close(got[:, 1].tolist(), want)


def test_grpo_one_real_step_on_smollm2_scores_through_ray_rm(server, grpo):
    trainer, sync = grpo
    sync.calls.clear()
    trainer.train()
    assert len(sync.calls) == 1
    prompts, completions, rewards = sync.calls[0]
    assert len(completions) == 2 and all(c[0]["role"] == "assistant" for c in completions)
    want = _v1_score(f"http://{server}/va", [{"messages": p + c} for p, c in zip(prompts, completions)], token=TOKEN)
    assert _close(rewards, want)
    logged = trainer.state.log_history[0]
    assert trainer.state.global_step == 1
    assert logged["rewards/rm_sync/mean"] == pytest.approx(sum(rewards) / 2, abs=1e-4)
    assert logged["rewards/rm_async/mean"] == pytest.approx(sum(rewards) / 2, abs=1e-4)
