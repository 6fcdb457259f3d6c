"""``RewardClient``: how PPO actors call the reward server, in the cluster (handle) or from anywhere (HTTP).

It must not import torch or the model stack: PPO actors import it next to their own models.

* Inside Ray (``ray.is_initialized()`` and the Serve app exists) it calls the deployment's ``score``
  method through a ``DeploymentHandle``: no HTTP, no JSON. Otherwise it POSTs to ``{url}/v1/score``.
* Large batches are split into ``chunk_size`` chunks sent concurrently (at most ``max_in_flight``).
* Scoring is idempotent, so backpressure (503/429, honouring Retry-After), replica death, replica
  shutdown and connection errors are retried with jittered exponential backoff; a 4xx is the caller's
  mistake and raises ``RewardClientError`` at once.
* One async core; ``score`` runs it on the client's own loop thread, so many threads (and many
  actors, each holding a pickled copy) can call one client at the same time.
"""
from __future__ import annotations

import asyncio
import random
import threading
import weakref
from typing import Any

from ray_rm.errors import UserError

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class RewardClientError(UserError):
    """The server refused the request (4xx): fix the inputs, retrying will not help."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


class RewardServerUnavailable(RuntimeError):
    """Every retry failed (server down, overloaded for too long, or replicas keep dying)."""


class _Retry(Exception):
    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.wait_s = wait_s


class RewardClient:
    def __init__(self, url: str | None = None, *, token: str | None = None, mode: str = "auto",
                 app_name: str = "ray_rm", deployment_name: str = "RewardServer", chunk_size: int = 256,
                 max_in_flight: int = 4, max_retries: int = 8, backoff_s: float = 0.25, max_backoff_s: float = 8.0,
                 timeout_s: float = 180.0):
        if mode not in ("auto", "handle", "http"):
            raise ValueError(f"mode must be auto, handle or http, got {mode!r}")
        if mode == "http" and not url:
            raise ValueError("mode='http' needs the server url, e.g. http://127.0.0.1:8000")
        self.url = url.rstrip("/") if url else None
        self.token = token
        self.mode = mode
        self.app_name, self.deployment_name = app_name, deployment_name
        self.chunk_size, self.max_in_flight = max(1, chunk_size), max(1, max_in_flight)
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.timeout_s = timeout_s
        self.retries = 0  # total retries so far (observability)
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._handle = None
        self._resolved: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http = weakref.WeakKeyDictionary()  # event loop -> httpx.AsyncClient

    def __getstate__(self) -> dict:  # handles, loops and connections are per process
        state = dict(self.__dict__)
        for key in ("_lock", "_handle", "_resolved", "_loop", "_http"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_state()

    # ------------------------------------------------------------------ public API
    def score(self, inputs: list[dict], normalize: bool | None = None, clip: float | None = None) -> list[float]:
        """Rewards for ``inputs`` (items of any form ``/v1/score`` accepts), in order. Blocking."""
        return self.score_full(inputs, normalize, clip)["rewards"]

    def score_texts(self, texts: list[str], normalize: bool | None = None) -> list[float]:
        return self.score([{"text": t} for t in texts], normalize)

    def score_full(self, inputs: list[dict], normalize: bool | None = None, clip: float | None = None,
                   aggregate: str | None = None) -> dict:
        """The merged ``/v1/score`` answer (rewards, raw_rewards, ensemble stats; for a process reward model
        ``step_rewards`` too, aggregated into ``rewards`` by ``aggregate``). Blocking."""
        loop = self._own_loop()
        return asyncio.run_coroutine_threadsafe(self.ascore_full(inputs, normalize, clip, aggregate), loop).result()

    def score_steps(self, items: list[dict], aggregate: str | None = None) -> tuple[list[float], list[list[float]]]:
        """(rewards, step_rewards) of ``{"prompt" | "messages", "steps"}`` items from a process reward model."""
        out = self.score_full(items, aggregate=aggregate)
        return out["rewards"], out["step_rewards"]

    async def ascore(self, inputs: list[dict], normalize: bool | None = None, clip: float | None = None) -> list[float]:
        return (await self.ascore_full(inputs, normalize, clip))["rewards"]

    async def ascore_full(self, inputs: list[dict], normalize: bool | None = None, clip: float | None = None,
                          aggregate: str | None = None) -> dict:
        """Async version for async actors and event loops (``score`` must not block a running loop)."""
        if not isinstance(inputs, list):
            raise TypeError(f"inputs must be a list of items, got {type(inputs).__name__}")
        if not inputs:
            return {"rewards": [], "raw_rewards": []}
        options = {k: v for k, v in (("normalize", normalize), ("clip", clip), ("aggregate", aggregate))
                   if v is not None}
        chunks = [inputs[i:i + self.chunk_size] for i in range(0, len(inputs), self.chunk_size)]
        gate = asyncio.Semaphore(self.max_in_flight)

        async def one(chunk: list) -> dict:
            async with gate:
                return await self._with_retries({"inputs": chunk, **options})

        return _merge(await asyncio.gather(*(one(c) for c in chunks)))

    def close(self) -> None:
        loop = self._loop
        if loop is not None:
            for client in list(self._http.values()):
                if client is not None:
                    try:
                        asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=5)
                    except Exception:  # noqa: BLE001 - best effort on shutdown
                        pass
            loop.call_soon_threadsafe(loop.stop)
            self._loop = None

    # ------------------------------------------------------------------ transport choice
    def _own_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="reward-client", daemon=True).start()
                self._loop = loop
            return self._loop

    def _transport(self) -> str:
        with self._lock:
            if self._resolved is None:
                self._resolved = self._resolve()
            return self._resolved

    def _resolve(self) -> str:
        if self.mode == "http":
            return "http"
        try:
            import ray
            from ray import serve

            if not ray.is_initialized():
                raise RuntimeError("Ray is not initialized in this process")
            self._handle = serve.get_deployment_handle(self.deployment_name, self.app_name)
            return "handle"
        except Exception as exc:  # no Serve app here: fall back to HTTP
            if self.mode == "handle" or not self.url:
                raise RewardServerUnavailable(
                    f"no Serve deployment {self.app_name}/{self.deployment_name} reachable ({exc}) and no url "
                    "given for HTTP") from exc
            return "http"

    # ------------------------------------------------------------------ one chunk, with retries
    async def _with_retries(self, payload: dict) -> dict:
        delay = self.backoff_s
        for attempt in range(self.max_retries + 1):
            try:
                if self._transport() == "handle":
                    return await self._via_handle(payload)
                return await self._via_http(payload)
            except _Retry as retry:
                if attempt == self.max_retries:
                    raise RewardServerUnavailable(f"gave up after {attempt + 1} attempts: {retry}") from None
                self.retries += 1
                wait = max(retry.wait_s or 0.0, delay) * random.uniform(0.8, 1.2)
                await asyncio.sleep(min(wait, self.max_backoff_s))
                delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")

    async def _via_handle(self, payload: dict) -> dict:
        from ray.exceptions import GetTimeoutError, RayActorError, TaskCancelledError, WorkerCrashedError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        from ray_rm.serve.batcher import BatcherClosed

        response = self._handle.score.remote(payload)
        try:
            answer = await asyncio.wait_for(_await(response), self.timeout_s)
        except BackPressureError as exc:
            raise _Retry(f"backpressure: {exc}", exc.retry_after_s) from None
        except (RayActorError, WorkerCrashedError, DeploymentUnavailableError, BatcherClosed,
                TaskCancelledError) as exc:
            raise _Retry(f"replica unavailable: {type(exc).__name__}") from None
        except (asyncio.TimeoutError, GetTimeoutError):
            response.cancel()
            raise _Retry(f"no answer within {self.timeout_s}s") from None
        if "error" in answer:
            raise RewardClientError(answer["error"], answer.get("status", 422))
        return answer

    async def _via_http(self, payload: dict) -> dict:
        import httpx

        client = self._http_client()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            resp = await client.post(f"{self.url}/v1/score", json=payload, headers=headers)
        except httpx.TransportError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        if resp.status_code == 200:
            return resp.json()
        if resp.status_code in RETRY_STATUS:
            raise _Retry(f"HTTP {resp.status_code}", _retry_after(resp.headers.get("retry-after")))
        try:
            message = resp.json().get("error", resp.text)
        except ValueError:
            message = resp.text
        raise RewardClientError(f"HTTP {resp.status_code}: {message}", resp.status_code)

    def _http_client(self):
        import httpx

        loop = asyncio.get_running_loop()
        client = self._http.get(loop)
        if client is None:
            client = httpx.AsyncClient(timeout=self.timeout_s, limits=httpx.Limits(max_connections=64))
            self._http[loop] = client
        return client


async def _await(response):
    return await response


def wait_until_healthy(url: str, timeout_s: float = 300.0, still_starting=None) -> None:
    """Block until ``GET {url}/healthz`` answers 200: a PPO launcher starts the server, then its actors.

    ``still_starting`` (optional) is called each poll; returning False (e.g. the server process exited)
    aborts at once instead of waiting out the timeout.
    """
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if still_starting is not None and not still_starting():
            raise RewardServerUnavailable(f"{url}: the server stopped before it became healthy")
        try:
            if httpx.get(f"{url.rstrip('/')}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RewardServerUnavailable(f"{url} did not become healthy within {timeout_s:.0f} s")


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _merge(parts: list[dict]) -> dict:
    """Concatenate chunk answers into one: list fields in order, ensemble members per member."""
    first = parts[0]
    out: dict[str, Any] = {k: v for k, v in first.items() if not isinstance(v, (list, dict))}
    for key in ("rewards", "raw_rewards", "num_tokens", "step_rewards"):
        if key in first:
            out[key] = [x for p in parts for x in p.get(key, [])]
    if "ensemble" in first:
        ens = {k: v for k, v in first["ensemble"].items() if not isinstance(v, list)}
        for key in ("mean", "std"):
            ens[key] = [x for p in parts for x in p["ensemble"][key]]
        ens["members"] = [[x for p in parts for x in p["ensemble"]["members"][m]]
                          for m in range(len(first["ensemble"]["members"]))]
        out["ensemble"] = ens
    return out
