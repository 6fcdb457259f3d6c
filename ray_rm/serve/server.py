"""The Ray Serve deployment: FastAPI routes + a handle method around one ``ScoringEngine``.

It must not score or check items itself: it parses bodies with ``inputs``/``vllm_api`` and calls the engine.

Routes (under the application's route prefix):
  * ``POST /v1/score``   ``{"inputs": [item, ...], "normalize"?, "clip"?}`` -> ``{"rewards", "raw_rewards", "model", ...}``
  * ``POST /get_reward`` OpenRLHF ``--remote_rm_url``: ``{"query": [text, ...]}`` -> ``{"rewards", "scores"}``
  * ``POST /classify`` (and ``/v1/classify``), ``/v1/embeddings``, ``/pooling``   vLLM/SGLang-compatible
                         pooling bodies for verl's reward loop (``vllm_api``)
  * ``GET /healthz``     liveness (no auth: probes carry no token), ``GET /v1/models`` the model card
  * ``GET /v1/stats``    this replica's batching since it started: forwards, requests per forward, tokens
Every user mistake is a 4xx with ``{"error": message}``; the body is read with a hard size cap before
parsing. With a token configured, scoring and model routes need ``Authorization: Bearer <token>``.
In-cluster callers use the ``score`` method through a ``DeploymentHandle`` (same validation, no HTTP).
"""
# No ``from __future__ import annotations``: FastAPI must see the real ``Request`` class in signatures.
import hmac
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from ray_rm.config import from_dict
from ray_rm.serve.batcher import BatcherClosed
from ray_rm.serve import vllm_api
from ray_rm.serve.config import ServeConfig
from ray_rm.serve.inputs import InputError, parse_json, parse_openrlhf_request, parse_score_request

log = logging.getLogger(__name__)

api = FastAPI(title="ray_rm reward model", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(InputError)
async def _input_error(request: Request, exc: InputError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)


@api.exception_handler(BatcherClosed)
async def _closing(request: Request, exc: BatcherClosed) -> JSONResponse:  # retryable, on another replica
    return JSONResponse({"error": "this replica is shutting down; retry"}, status_code=503,
                        headers={"Retry-After": "1"})


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:  # 404 / 405
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refusing (413) a declared or streamed size over ``max_bytes`` before buffering it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InputError("invalid Content-Length header", 400)
        if int(declared) > max_bytes:
            raise InputError(f"request body is {declared} bytes; the limit is {max_bytes}", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise InputError(f"request body exceeds the limit of {max_bytes} bytes", 413)
    return bytes(body)


@serve.deployment
@serve.ingress(api)
class RewardServer:
    """One replica: model(s) loaded once, requests batched across callers by ``ScoringEngine``."""

    def __init__(self, config: dict):
        import torch

        from ray_rm.logging_setup import configure_worker
        from ray_rm.serve.scoring_engine import ScoringEngine

        configure_worker()
        self.cfg = from_dict(ServeConfig, config)
        torch.set_num_threads(self.cfg.torch_threads or max(1, int(self.cfg.num_cpus)))
        self._token = self.cfg.resolved_token().encode()
        self.max_body = int(self.cfg.max_body_mb * 1024 * 1024)
        self.engine = ScoringEngine(self.cfg)
        self._label = vllm_api.served_label(self.engine.members[0].model.config)
        log.info("reward server ready: %s (%d model(s)), auth %s", self.engine.name, len(self.engine.members),
                 "on" if self._token else "off")

    # ------------------------------------------------------------------ helpers
    def _authorize(self, request: Request) -> None:
        if not self._token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
            raise InputError("missing or invalid bearer token (Authorization: Bearer <token>)", 401)

    async def _body(self, request: Request):
        self._authorize(request)
        return parse_json(await read_body(request, self.max_body), self.max_body)

    # ------------------------------------------------------------------ HTTP routes
    @api.get("/healthz")
    async def healthz(self) -> dict:
        self.engine.check()
        return {"status": "ok", "model": self.engine.name}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        return {"object": "list", "data": [self.engine.describe()]}

    @api.get("/v1/stats")
    async def stats(self, request: Request) -> dict:
        """Answered by whichever replica Serve routes to: with several replicas, poll more than once."""
        self._authorize(request)
        return self.batching_stats()

    @api.post("/v1/score")
    async def v1_score(self, request: Request) -> dict:
        body = await self._body(request)
        req = parse_score_request(body, self.cfg.max_items, self.cfg.normalize, self.cfg.clip)
        return await self.engine.score(req)

    @api.post("/get_reward")
    async def get_reward(self, request: Request) -> dict:
        body = await self._body(request)
        req = parse_openrlhf_request(body, self.cfg.max_items, self.cfg.normalize, self.cfg.clip)
        out = await self.engine.score(req)
        return {"rewards": out["rewards"], "scores": out["rewards"], "model": out["model"]}

    # ------------------------------------------------------------------ vLLM-compatible pooling routes
    async def _pooling(self, request: Request, route: vllm_api.Route) -> dict:
        body = await self._body(request)
        call = route.parse(body, self.cfg.max_items, self.cfg.normalize, self.cfg.clip)
        return route.respond(call, await self.engine.score(call.request), self._label)

    @api.post("/classify")
    @api.post("/v1/classify")
    async def classify(self, request: Request) -> dict:
        return await self._pooling(request, vllm_api.CLASSIFY)

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> dict:
        return await self._pooling(request, vllm_api.EMBEDDINGS)

    @api.post("/pooling")
    async def pooling(self, request: Request) -> dict:
        return await self._pooling(request, vllm_api.POOLING)

    # ------------------------------------------------------------------ handle API (in-cluster)
    async def score(self, payload: dict) -> dict:
        """``/v1/score`` for ``DeploymentHandle`` callers.

        A refused payload returns ``{"error", "status"}`` instead of raising, so a caller's mistake is
        not logged by Serve as a failed request with a traceback.
        """
        try:
            req = parse_score_request(payload, self.cfg.max_items, self.cfg.normalize, self.cfg.clip)
            return await self.engine.score(req)
        except InputError as exc:
            return {"error": str(exc), "status": exc.status}

    def batching_stats(self) -> dict:
        """``/v1/stats`` for handle callers: one entry per ensemble member, and the replica's actor id."""
        from ray import get_runtime_context

        return {"replica": get_runtime_context().get_actor_id(), "members": self.engine.batching_stats()}

    # ------------------------------------------------------------------ Serve lifecycle
    def check_health(self) -> None:
        self.engine.check()

    def __del__(self):
        # Serve drains in-flight requests (graceful_shutdown_timeout_s) before this runs.
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
