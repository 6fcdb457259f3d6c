"""End-to-end tests of the reward endpoint: a real local Ray Serve app, real HTTP (httpx), real weights.

Rewards are compared with an independent ``AutoModelForSequenceClassification`` forward over the
documented tokenization rules. One module-scoped Serve instance hosts three applications:
``/plain`` (2 replicas), ``/auth`` (bearer token, tight backpressure limits) and ``/ens`` (2-model
ensemble); Serve is shut down at module end so other modules sharing ``ray_local`` get the CPUs back.
"""
from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"}]
PROMPT = "\n\nHuman: Can you tell me how to make a paper airplane?\n\nAssistant:"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def second_rm(tmp_path_factory, tiny_decoder_dir) -> str:
    """A second exported RM (other head seed, other reward stats) for the ensemble."""
    from ray_rm.config_schema import ModelConfig
    from ray_rm.model.build import build_reward_model
    from ray_rm.model.export import export_hf

    model = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir), seed=11)
    out = tmp_path_factory.mktemp("exported_rm_b") / "hf"
    export_hf(model, tiny_decoder_dir, out, {"chat_template": "auto", "max_length": 1024,
                                              "reward_mean": -1.0, "reward_std": 0.5})
    return str(out)


class Reference:
    """Independent rewards: AutoModelForSequenceClassification, tokenized as ray_rm_scoring.json says."""

    def __init__(self, path: str):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()

    def ids(self, x) -> list[int]:
        if isinstance(x, str):
            return self.tok(x)["input_ids"]
        return self.tok.apply_chat_template(x, tokenize=True)["input_ids"]

    def __call__(self, xs: list) -> list[float]:
        with self.torch.no_grad():
            return [self.model(self.torch.tensor([self.ids(x)])).logits[0, 0].item() for x in xs]


@pytest.fixture(scope="module")
def ref(exported_tiny_rm) -> Reference:
    return Reference(exported_tiny_rm)


@pytest.fixture(scope="module")
def server(ray_local, exported_tiny_rm, second_rm):
    from ray import serve

    from ray_rm.serve.app import build_app
    from ray_rm.serve.config import ServeConfig

    port = _free_port()
    common = dict(model_path=exported_tiny_rm, num_cpus=0.25, torch_threads=1, batch_wait_ms=10,
                  health_check_period_s=2.0, max_items=64, max_body_mb=0.25)
    apps = [
        ServeConfig(app_name="rm_plain", route_prefix="/plain", num_replicas=2, **common),
        ServeConfig(app_name="rm_auth", route_prefix="/auth", auth_token=TOKEN, max_ongoing_requests=1,
                    max_queued_requests=1, retry_after_s=3, **common),
        ServeConfig(app_name="rm_ens", route_prefix="/ens", ensemble_paths=[second_rm], ensemble_penalty=0.5,
                    model_name="ens", **common),
    ]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run_many([serve.RunTarget(build_app(c), name=c.app_name, route_prefix=c.route_prefix) for c in apps])
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def _score(url: str, inputs: list, **kw) -> dict:
    r = httpx.post(f"{url}/v1/score", json={"inputs": inputs, **kw}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------------------------------ scoring
def test_every_input_form_matches_automodel(server, ref):
    url = f"{server}/plain"
    text = PROMPT + " Fold a sheet in half."
    prompt_msgs, response = CHAT[:2], CHAT[2]["content"]
    out = _score(url, [
        {"messages": CHAT},
        {"prompt": PROMPT, "response": " Fold a sheet in half."},
        {"prompt": prompt_msgs, "response": response},
        {"text": text},
        {"input_ids": ref.ids(text)},
    ])
    expected = ref([CHAT, text, CHAT, text, text])
    assert out["model"] == "hf" and out["normalized"] is False
    assert max(abs(a - b) for a, b in zip(out["rewards"], expected)) <= 1e-4
    assert out["rewards"] == out["raw_rewards"]


def test_normalization_and_clip(server, ref):
    url = f"{server}/plain"
    raw = ref(["hello there", CHAT])
    norm = _score(url, [{"text": "hello there"}, {"messages": CHAT}], normalize=True)
    assert norm["normalized"] is True
    assert max(abs(a - (r - 0.25) / 2.0) for a, r in zip(norm["rewards"], raw)) <= 1e-4
    assert max(abs(a - r) for a, r in zip(norm["raw_rewards"], raw)) <= 1e-4
    clip = min(abs(r) for r in raw) / 2
    clipped = _score(url, [{"text": "hello there"}, {"messages": CHAT}], clip=clip)["rewards"]
    assert [abs(c) for c in clipped] == pytest.approx([clip, clip])


def test_openrlhf_get_reward_models_and_health(server, ref):
    url = f"{server}/plain"
    queries = [PROMPT + " Sure.", PROMPT + " No."]
    r = httpx.post(f"{url}/get_reward", json={"query": queries, "prompts": [PROMPT] * 2, "labels": ["", ""]})
    assert r.status_code == 200
    body = r.json()
    assert max(abs(a - b) for a, b in zip(body["rewards"], ref(queries))) <= 1e-4
    assert body["scores"] == body["rewards"]
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
    card = httpx.get(f"{url}/v1/models").json()["data"][0]
    assert card["id"] == "hf" and card["reward_mean"] == 0.25 and card["reward_std"] == 2.0
    assert card["max_length"] == 1024 and card["ensemble_size"] == 1


def test_ensemble_mean_std_and_conservative_reward(server, ref, second_rm):
    ref_b = Reference(second_rm)
    xs = ["a short answer", CHAT]
    a, b = ref(xs), ref_b(xs)
    out = _score(f"{server}/ens", [{"text": "a short answer"}, {"messages": CHAT}], normalize=True)
    na = [(r - 0.25) / 2.0 for r in a]
    nb = [(r + 1.0) / 0.5 for r in b]
    mean = [(x + y) / 2 for x, y in zip(na, nb)]
    std = [abs(x - y) / 2 for x, y in zip(na, nb)]
    ens = out["ensemble"]
    assert out["model"] == "ens" and ens["size"] == 2 and ens["penalty"] == 0.5
    assert ens["members"][0] == pytest.approx(na, abs=1e-4) and ens["members"][1] == pytest.approx(nb, abs=1e-4)
    assert ens["mean"] == pytest.approx(mean, abs=1e-4) and ens["std"] == pytest.approx(std, abs=1e-4)
    assert out["rewards"] == pytest.approx([m - 0.5 * s for m, s in zip(mean, std)], abs=1e-4)
    assert out["raw_rewards"] == pytest.approx([(x + y) / 2 for x, y in zip(a, b)], abs=1e-4)


# ------------------------------------------------------------------------------------------ security + limits
def test_auth_on_and_off(server):
    body = {"inputs": [{"text": "hi"}]}
    no_token = httpx.post(f"{server}/auth/v1/score", json=body)
    assert no_token.status_code == 401 and no_token.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in no_token.json()["error"]
    for header in ("Bearer wrong", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x"):
        assert httpx.post(f"{server}/auth/v1/score", json=body, headers={"Authorization": header}).status_code == 401
    assert httpx.post(f"{server}/auth/get_reward", json={"query": ["hi"]}).status_code == 401
    assert httpx.get(f"{server}/auth/v1/models").status_code == 401
    assert httpx.get(f"{server}/auth/v1/stats").status_code == 401
    ok = httpx.post(f"{server}/auth/v1/score", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and len(ok.json()["rewards"]) == 1
    assert httpx.get(f"{server}/auth/healthz").status_code == 200  # probes carry no token
    assert httpx.post(f"{server}/plain/v1/score", json=body).status_code == 200  # no token configured: open


def test_backpressure_is_503_with_retry_after_and_the_client_retries(server):
    from ray_rm.serve.client import RewardClient

    url = f"{server}/auth"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    heavy = {"inputs": [{"text": f"{i} " + "word " * 400} for i in range(48)]}

    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(f"{url}/v1/score", json=heavy, headers=headers)
                                          for _ in range(16)))

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["retry-after"] == "3"
    client = RewardClient(url, token=TOKEN, mode="http", backoff_s=0.2, max_retries=30)

    def call(out, i):
        out[i] = client.score(heavy["inputs"][:24])

    results: dict = {}
    threads = [threading.Thread(target=call, args=(results, i)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and all(r == results[0] for r in results.values()) and client.retries > 0


def _hostile_requests() -> list[tuple[str, str, object]]:
    """(method, path, body) triples: bytes are sent raw, anything else as JSON."""
    rng = random.Random(1234)
    huge_text = "x" * (300 * 1024)
    bodies: list = [
        b"", b"{", b"}", b"null", b"true", b"0", b'"inputs"', b"[]", b"{}", b"\xff\xfe\xfd", b"\x00" * 64,
        b"[" * 100_000, b'{"inputs":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"inputs": [{"text": "a"}], "clip": NaN}', b'{"inputs": [{"text": "a"}], "clip": Infinity}',
        b'{"inputs": [{"text": "\\ud800"}]}', b'{"inputs": [{"text": "\\udfff tail"}]}',
        b'{"inputs": [{"text": "a"}], "inputs": 5}', b"\xef\xbb\xbf{\"inputs\": [{\"text\": \"bom\"}]}",
        json.dumps({"inputs": [{"text": huge_text}]}).encode(),  # over max_body_mb
        json.dumps({"inputs": [{"text": "a"}] * 10_000}).encode(),  # over max_items
        json.dumps({"inputs": [{"text": "word " * 1500}]}).encode(),  # over max_length tokens
    ]
    values = [None, True, 3, -1.5, "s", [], {}, [1], {"a": 1}, "\u0000", 2**70]
    for v in values:
        bodies.append({"inputs": v})
        bodies.append({"inputs": [v]})
        bodies.append({"inputs": [{"text": v}]})
        bodies.append({"inputs": [{"messages": v}]})
        bodies.append({"inputs": [{"messages": [{"role": "user", "content": v}]}]})
        bodies.append({"inputs": [{"messages": [{"role": v, "content": "hi"}]}]})
        bodies.append({"inputs": [{"prompt": v, "response": "r"}]})
        bodies.append({"inputs": [{"input_ids": v}]})
        bodies.append({"inputs": [{"input_ids": [1, v]}]})
        bodies.append({"inputs": [{"text": "a"}], "normalize": v})
        bodies.append({"inputs": [{"text": "a"}], "clip": v})
        bodies.append({"query": v})
        bodies.append({"query": [v]})
    bodies += [{"inputs": [{"input_ids": [49152]}]}, {"inputs": [{"input_ids": [2**63]}]},
               {"inputs": [{"input_ids": [-1]}]}, {"inputs": [{"input_ids": ["1"]}]},
               {"inputs": [{"messages": [{"role": "user", "content": [{"type": "image", "url": "x"}]}]}]},
               {"inputs": [{"messages": [{"role": "user", "content": "hi", "extra": {"deep": [[[1]]]}}]}]},
               {"inputs": [{"text": "a", "extra": 1}]}, {"inputs": [{}]}, {"inputs": [{"text": "a"}], "x": 1}]
    # random JSON values of random shapes
    def rand_value(depth=0):
        kind = rng.randrange(7 if depth < 4 else 4)
        if kind == 0:
            return rng.choice([None, True, False])
        if kind == 1:
            return rng.randint(-10**12, 10**12)
        if kind == 2:
            return rng.random() * 1e6
        if kind == 3:
            return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x400, 0x4ff),
                                            rng.randrange(0x1f600, 0x1f64f)])) for _ in range(rng.randrange(8)))
        if kind == 4:
            return [rand_value(depth + 1) for _ in range(rng.randrange(4))]
        keys = ["inputs", "text", "messages", "role", "content", "prompt", "response", "input_ids", "query"]
        return {rng.choice(keys): rand_value(depth + 1) for _ in range(rng.randrange(4))}
    bodies += [rand_value() for _ in range(60)]
    requests = []
    for i, body in enumerate(bodies):
        requests.append(("POST", "/plain/get_reward" if i % 5 == 0 else "/plain/v1/score", body))
    requests += [("GET", "/plain/v1/score", None), ("PUT", "/plain/v1/score", b"{}"), ("GET", "/plain/nope", None),
                 ("DELETE", "/plain/healthz", None), ("POST", "/plain/v1/models", b"{}")]
    return requests


# valid but unusual text that must score (200) with a finite reward
UNICODE_OK = ["emoji 😀👍🏽 family 👨‍👩‍👧", "עברית RTL \u200fmixed\u200e text", "e\u0301 combining", "zero\u200bwidth\u200djoin",
              "nul \u0000 inside", "\ufeffbom first", "中文字符和日本語のテキスト", "\U0010ffff max code point",
              " ", "\n\n\t"]


def test_fuzz_hostile_requests_never_5xx_and_server_stays_correct(server, ref):
    requests = _hostile_requests()
    requests += [("POST", "/plain/v1/score", {"inputs": [{"text": t}]}) for t in UNICODE_OK]
    assert len(requests) >= 200

    async def send_all():
        async with httpx.AsyncClient(base_url=server, timeout=120) as client:
            gate = asyncio.Semaphore(8)

            async def one(method, path, body):
                async with gate:
                    if isinstance(body, bytes) or body is None:
                        return await client.request(method, path, content=body,
                                                    headers={"content-type": "application/json"})
                    return await client.request(method, path, json=body)

            return await asyncio.gather(*(one(*r) for r in requests))

    responses = asyncio.run(send_all())
    server_errors = [(r.status_code, req[1], str(req[2])[:80]) for r, req in zip(responses, requests)
                     if r.status_code >= 500]
    assert not server_errors
    for r in responses:
        assert r.status_code in (200, 400, 401, 404, 405, 413, 422), r.status_code
        if r.status_code >= 400:
            assert "error" in r.json()  # a message, never a stack trace
            assert "Traceback" not in r.text
    unicode_answers = responses[-len(UNICODE_OK):]
    assert all(r.status_code == 200 for r in unicode_answers)
    assert all(abs(v) < 1e6 for r in unicode_answers for v in r.json()["rewards"])
    codes = {r.status_code for r in responses}
    assert {400, 413, 422}.issubset(codes)
    # still healthy and still scoring correctly
    assert httpx.get(f"{server}/plain/healthz").status_code == 200
    out = _score(f"{server}/plain", [{"text": "still alive"}])
    assert abs(out["rewards"][0] - ref(["still alive"])[0]) <= 1e-4


# ------------------------------------------------------------------------------------------ concurrency
def test_64_concurrent_clients_all_answered_correctly(server, ref):
    texts = [f"{PROMPT} answer number {i}: " + "ok " * (i % 17) for i in range(64)]
    expected = ref(texts)

    async def clients():
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*(client.post(f"{server}/plain/v1/score", json={"inputs": [{"text": t}]})
                                          for t in texts))

    responses = asyncio.run(clients())
    assert all(r.status_code == 200 for r in responses)
    got = [r.json()["rewards"][0] for r in responses]
    assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-4


def test_stats_count_every_request_and_concurrent_requests_share_forwards(server):
    """``/v1/stats`` (one replica, two ensemble members): 16 concurrent requests are all counted, in fewer
    forwards than requests, i.e. the batcher merged requests from different clients."""
    def stats() -> list[dict]:
        r = httpx.get(f"{server}/ens/v1/stats", timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["members"]

    before = stats()

    async def clients():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(f"{server}/ens/v1/score", json={"inputs": [{"text": f"t {i}"}]})
                                          for i in range(16)))

    assert all(r.status_code == 200 for r in asyncio.run(clients()))
    after = stats()
    assert len(after) == 2
    for b, a in zip(before, after):
        assert a["requests"] - b["requests"] == 16 and a["sequences"] - b["sequences"] == 16
        assert 1 <= a["batches"] - b["batches"] < 16
        assert a["requests_per_batch"] == round(a["requests"] / a["batches"], 3)


def test_ray_actors_call_through_the_handle(server, ray_local, ref):
    from ray_rm.serve.client import RewardClient

    @ray_local.remote(num_cpus=0)
    class PPOActor:
        def __init__(self, client):
            self.client = client

        def score(self, texts):
            rewards = self.client.score_texts(texts)
            return self.client._resolved, rewards

        async def ascore(self, texts):
            return await self.client.ascore([{"text": t} for t in texts])

    client = RewardClient(app_name="rm_plain", mode="handle", chunk_size=8)  # pickled into each actor
    texts = [f"rollout {i}: " + "fine " * (i % 5) for i in range(20)]
    actors = [PPOActor.remote(client) for _ in range(3)]
    results = ray_local.get([a.score.remote(texts) for a in actors] + [actors[0].ascore.remote(texts[:5])])
    expected = ref(texts)
    for transport, rewards in results[:3]:
        assert transport == "handle"
        assert max(abs(a - b) for a, b in zip(rewards, expected)) <= 1e-4
    assert max(abs(a - b) for a, b in zip(results[3], expected[:5])) <= 1e-4
    from ray_rm.serve.client import RewardClientError

    with pytest.raises(RewardClientError, match=r"inputs\[0\].text"):
        client.score([{"text": 5}])  # a refused payload is a client error, not a retry loop


def test_killing_a_replica_under_load_loses_no_answer(server, ray_local, ref):
    """Runs last: one of /plain's two replicas is killed while clients (handle and HTTP) keep scoring."""
    from ray_rm.serve.client import RewardClient

    texts = [f"{PROMPT} load {i} " + "go " * (i % 9) for i in range(24)]
    expected = ref(texts)
    clients = [RewardClient(app_name="rm_plain", mode="handle", chunk_size=4, backoff_s=0.2, max_retries=40),
               RewardClient(f"{server}/plain", mode="http", chunk_size=4, backoff_s=0.2, max_retries=40)]
    answers, errors, stop = [], [], threading.Event()

    def loop(client):
        try:
            while not stop.is_set():
                answers.append(client.score_texts(texts))
        except Exception as exc:  # noqa: BLE001 - any failure fails the test below
            errors.append(repr(exc))

    threads = [threading.Thread(target=loop, args=(c,)) for c in clients for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    names = [a["name"] for a in ray_local.util.list_named_actors(all_namespaces=True)
             if "SERVE_REPLICA" in a["name"] and "rm_plain" in a["name"]]
    assert len(names) == 2
    ray_local.kill(ray_local.get_actor(names[0], namespace="serve"), no_restart=True)
    killed_at = len(answers)
    time.sleep(6.0)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert len(answers) > killed_at  # traffic kept flowing after the kill
    for rewards in answers:
        assert max(abs(a - b) for a, b in zip(rewards, expected)) <= 1e-4
