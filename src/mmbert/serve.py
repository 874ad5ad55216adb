"""`mmbert serve`: embeddings over HTTP, OpenAI- and TEI-compatible, with dynamic batching.

    mmbert serve --model out/merged --port 8080 [--api-key KEY]
    python -c "from openai import OpenAI; c = OpenAI(base_url='http://127.0.0.1:8080/v1', api_key='KEY');
               print(c.embeddings.create(model='merged', input=['hello', 'bonjour']).data[0].embedding[:4])"
    curl -s localhost:8080/embed -H 'content-type: application/json' -d '{"inputs": ["hello"]}'

Endpoints (FastAPI app on uvicorn):
- `POST /v1/embeddings` — OpenAI's request and response: `input` a string, a list of strings, a
  token-id list or a list of token-id lists (ids are used as given: include <bos>/<eos> as the
  tokenizer would); `encoding_format` "float" or "base64" (little-endian float32, what the
  official client asks for by default); `dimensions` only when equal to the model's hidden size.
  `GET /v1/models` lists the one served model.
- `POST /embed` — text-embeddings-inference's (`inputs`, `normalize` default true, `truncate`).
- `GET /health`, `GET /info` (model, dims, max length, dtype, pooling, limits), `GET /metrics`
  (Prometheus text: requests, inputs, forward batches, dropped inputs).
Errors are JSON in each API's own shape: 422 for a malformed or empty input, 413 for more inputs
than --max-inputs or an input longer than --max-length without truncation, 401 for a wrong API
key, 404 for another model name.

Dynamic batching: request handlers tokenize and validate, then queue a job; one worker thread takes
every queued job that fits in --max-batch-tokens as soon as the previous forward pass ends (no
timer: under load the queue fills while the model runs, so batches grow with concurrency) and runs
them through `mmbert.inference.embed` — the same length-sorted, packed, unpadded code as offline
encoding. A client that disconnects while queued is dropped before its batch runs, and one that
disconnects mid-batch has its result discarded; a batch that raises is retried job by job so one
bad job cannot fail the others. SIGTERM / Ctrl-C stop accepting connections and finish in-flight
requests before the worker stops (uvicorn's graceful shutdown).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import threading
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
# module level: FastAPI resolves the route functions' string annotations (`request: Request`) here
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict

from mmbert.export.hf import from_pretrained
from mmbert.inference import POOLINGS, _bare_encoder, embed, int8_probe, prepare, resolve_dtype
from mmbert.version import __version__

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- settings
@dataclass
class ServeConfig:
    model: str
    host: str = "127.0.0.1"
    port: int = 8080
    pooling: str = "mean"  # mean | first
    dtype: str = "auto"  # auto | fp32 | bf16 (mmbert.inference.DTYPES spellings)
    max_batch_tokens: int = 16384  # tokens per forward pass
    max_inputs: int = 512  # inputs per request
    max_length: int | None = None  # tokens per input; default: the model's max_position_embeddings
    auto_truncate: bool = False  # cut over-long inputs instead of answering 413
    api_key: str | None = None
    served_name: str | None = None  # the `model` name clients send; default: the directory name
    threads: int | None = None
    graceful_timeout: float = 30.0  # seconds to finish in-flight requests on shutdown


class APIError(Exception):
    """An error answered to the client as JSON with an HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


# ----------------------------------------------------------------------------- batching
@dataclass(eq=False)
class Job:
    """One request's token-id lists waiting for the worker; `abandoned` is set when its client left."""

    ids: list[list[int]]
    done: Any  # callable(result | BaseException), called from the worker thread
    abandoned: bool = False
    tokens: int = field(init=False)

    def __post_init__(self):
        self.tokens = sum(len(x) for x in self.ids)


def gather(pending: deque, budget: int) -> tuple[list[Job], int]:
    """Take jobs from the front of `pending` while their tokens fit in `budget` (always at least
    one live job); abandoned jobs are dropped. Returns (jobs, inputs dropped)."""
    taken, used, dropped = [], 0, 0
    while pending:
        job = pending[0]
        if job.abandoned:
            pending.popleft()
            dropped += len(job.ids)
            continue
        if taken and used + job.tokens > budget:
            break
        taken.append(pending.popleft())
        used += job.tokens
    return taken, dropped


class Batcher:
    """A worker thread that runs queued jobs through `embed` in token-budget batches."""

    def __init__(self, run_batch, max_batch_tokens: int):
        self.run_batch = run_batch  # list[list[int]] -> float32 tensor [n, hidden]
        self.max_batch_tokens = max_batch_tokens
        self.pending: deque[Job] = deque()
        self.cond = threading.Condition()
        self.closing = False
        self.stats = {"requests": 0, "inputs": 0, "tokens": 0, "batches": 0, "dropped_inputs": 0, "errors": 0}
        self.thread = threading.Thread(target=self._loop, name="mmbert-batcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive() and not self.closing

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.closing:
                raise APIError(503, "the server is shutting down; retry on another replica", "server_error")
            self.pending.append(job)
            self.stats["requests"] += 1
            self.cond.notify()

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the worker."""
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.closing:
                    self.cond.wait()
                if not self.pending:
                    return
                jobs, dropped = gather(self.pending, self.max_batch_tokens)
                self.stats["dropped_inputs"] += dropped
            if dropped:
                log.info("dropped %d inputs of clients that disconnected while queued", dropped)
            if jobs:
                self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        ids = [x for j in jobs for x in j.ids]
        try:
            vecs = self.run_batch(ids)
        except Exception as e:  # noqa: BLE001 - answered as a 500, never kills the worker
            if len(jobs) > 1:  # find the job that fails; the others still get their vectors
                for j in jobs:
                    self._run([j])
                return
            log.exception("batch failed")
            self.stats["errors"] += 1
            jobs[0].done(e)
            return
        self.stats["batches"] += 1
        self.stats["inputs"] += len(ids)
        self.stats["tokens"] += sum(len(x) for x in ids)
        start = 0
        for j in jobs:
            part = vecs[start:start + len(j.ids)]
            start += len(j.ids)
            if j.abandoned:
                self.stats["dropped_inputs"] += len(j.ids)
                continue
            j.done(part)


# ----------------------------------------------------------------------------- the model
class Engine:
    """The loaded model, its tokenizer, request validation and the batcher."""

    def __init__(self, cfg: ServeConfig):
        if cfg.pooling not in POOLINGS or cfg.pooling == "none":
            raise ValueError(f"unknown pooling {cfg.pooling!r} for serving; choose mean or first")
        for name in ("max_batch_tokens", "max_inputs"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(cfg, name)}")
        self.cfg = cfg
        model = from_pretrained(cfg.model, head="none")
        self.tokenizer = getattr(model, "tokenizer", None)
        self.config = model.config
        limit = self.config.max_position_embeddings
        if cfg.max_length is not None and not 1 <= cfg.max_length <= limit:
            raise ValueError(f"--max-length {cfg.max_length} is outside 1…{limit} (the model's "
                             f"max_position_embeddings); pick a value in that range")
        self.max_length = cfg.max_length or limit
        device = next(model.parameters()).device
        # "auto" → int8 only if this model passes the int8 check on the probe sentences
        self.dtype = resolve_dtype(cfg.dtype, device, model, lambda: int8_probe(self.tokenizer, []))
        # cast once here; embed() then finds the model already in `dtype` and uses it as is
        self.encoder = prepare(_bare_encoder(model), self.dtype)
        self.dims = self.config.hidden_size
        self.name = cfg.served_name or Path(str(cfg.model).rstrip("/")).name
        self.batcher = Batcher(self._run_batch, cfg.max_batch_tokens)

    def _run_batch(self, ids: list[list[int]]) -> torch.Tensor:
        return embed(self.encoder, ids, pooling=self.cfg.pooling, batch_tokens=self.cfg.max_batch_tokens,
                      max_length=self.max_length, truncate="error", dtype=self.dtype, threads=self.cfg.threads)

    def info(self) -> dict:
        return {"model_id": self.name, "model_path": str(self.cfg.model), "model_dtype": str(self.dtype).replace("torch.", ""),
                "model_type": {"embedding": {"pooling": self.cfg.pooling}}, "dims": self.dims,
                "pooling": self.cfg.pooling, "max_input_length": self.max_length,
                "max_batch_tokens": self.cfg.max_batch_tokens, "max_client_batch_size": self.cfg.max_inputs,
                "auto_truncate": self.cfg.auto_truncate, "version": __version__, "server": "mmbert"}

    # ------------------------------------------------------------------ request → token ids
    def token_ids(self, inputs: Any, field_name: str, truncate: bool) -> list[list[int]]:
        """Validate an `input`/`inputs` value and turn it into token-id lists (with special tokens)."""
        if isinstance(inputs, str):
            items: list = [inputs]
        elif isinstance(inputs, list) and inputs and all(isinstance(t, int) and not isinstance(t, bool) for t in inputs):
            items = [inputs]  # one token-id list
        elif isinstance(inputs, list):
            items = inputs
        else:
            raise APIError(422, f"`{field_name}` must be a string, a list of strings, a list of token ids or "
                                f"a list of token-id lists, got {type(inputs).__name__}", param=field_name)
        if not items:
            raise APIError(422, f"`{field_name}` is empty; send at least one input", param=field_name)
        if len(items) > self.cfg.max_inputs:
            raise APIError(413, f"{len(items)} inputs in one request, more than the server's --max-inputs "
                                f"{self.cfg.max_inputs}; split the request", param=field_name)
        if all(isinstance(x, str) for x in items):
            blank = next((i for i, x in enumerate(items) if not x.strip()), None)
            if blank is not None:
                raise APIError(422, f"`{field_name}[{blank}]` is empty; every input needs some text", param=field_name)
            if self.tokenizer is None:
                raise APIError(422, "the served model directory has no tokenizer files, so texts cannot be "
                                    "encoded; send token ids or serve a directory with tokenizer.json",
                               param=field_name)
            ids = [list(x) for x in self.tokenizer.encode_batch(items)]
        elif all(isinstance(x, list) for x in items):
            vocab = self.config.vocab_size
            for i, x in enumerate(items):
                if not x:
                    raise APIError(422, f"`{field_name}[{i}]` is an empty token list", param=field_name)
                if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in x):
                    raise APIError(422, f"`{field_name}[{i}]` holds something other than token ids in 0…{vocab - 1}",
                                   param=field_name)
            ids = [list(x) for x in items]
        else:
            raise APIError(422, f"`{field_name}` mixes texts and token ids, or holds other values; send one kind",
                           param=field_name)
        long = [i for i, x in enumerate(ids) if len(x) > self.max_length]
        if long and not truncate:
            i = long[0]
            raise APIError(413, f"`{field_name}[{i}]` has {len(ids[i])} tokens, more than the server's max length "
                                f"{self.max_length}; shorten it or ask for truncation (TEI: \"truncate\": true; "
                                f"server: --auto-truncate)", param=field_name)
        # the client asked for truncation: cut without a warning per request (warnings' filters are
        # process-global, so not silenced from these threads), keeping the closing separator as
        # mmbert.inference's truncation does
        n, sep = self.max_length, self.config.sep_token_id
        for i in long:
            x = ids[i]
            ids[i] = x[:n - 1] + [x[-1]] if sep is not None and x[-1] == sep else x[:n]
        return ids

    async def embed(self, request: Any, ids: list[list[int]]) -> torch.Tensor:
        """Queue `ids` and wait for their vectors; a client that disconnects first abandons its job."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def done(result):  # runs in the worker thread
            loop.call_soon_threadsafe(_resolve, fut, result)

        job = Job(ids, done)
        self.batcher.submit(job)
        watcher = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({fut, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not fut.done():  # the client went away (or we are being cancelled): drop the job
                job.abandoned = True
                fut.cancel()
            watcher.cancel()
        if fut.cancelled():
            log.info("client disconnected; dropped a request of %d inputs", len(ids))
            raise APIError(499, "client disconnected", "client_closed")
        result = fut.result()
        if isinstance(result, BaseException):
            raise APIError(500, f"the model failed on this request ({type(result).__name__}: {result})", "server_error")
        return result


def _resolve(fut: asyncio.Future, result) -> None:
    if not fut.done():  # a cancelled future (client gone) is left alone
        fut.set_result(result)


async def _wait_for_disconnect(request) -> None:
    """Returns when the client closes the connection. The body has been read already, so the next
    ASGI message can only be `http.disconnect` (uvicorn sends it on connection loss)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ----------------------------------------------------------------------------- the HTTP app
class OpenAIRequest(BaseModel):
    """OpenAI's embeddings request; unknown fields are refused (422), `user` is accepted and ignored."""

    model_config = ConfigDict(extra="forbid")
    input: Any = None
    model: str | None = None
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None


class TEIRequest(BaseModel):
    """text-embeddings-inference's /embed request."""

    model_config = ConfigDict(extra="forbid")
    inputs: Any = None
    normalize: bool = True
    truncate: bool | None = None


def create_app(engine: Engine):
    @asynccontextmanager
    async def lifespan(app):
        engine.batcher.start()
        t0 = time.time()
        yield
        # uvicorn has finished the in-flight requests by now; stop the worker
        await asyncio.to_thread(engine.batcher.close, engine.cfg.graceful_timeout)
        log.info("mmbert serve: stopped after %.0f s (%s)", time.time() - t0,
                 ", ".join(f"{k} {v}" for k, v in engine.batcher.stats.items()))

    app = FastAPI(title="mmbert serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    _add_error_handlers(app)
    _add_status_routes(app, engine)
    _add_embedding_routes(app, engine)
    return app


def _error_response(request: Request, status: int, message: str, kind: str, param: str | None = None):
    """An error in the shape of the API the request used: OpenAI's under /v1/, else TEI's."""
    if request.url.path.startswith("/v1/"):
        body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    else:  # text-embeddings-inference's shape
        body = {"error": message, "error_type": kind}
    return JSONResponse(body, status_code=status)


def _check_key(engine: Engine, request: Request) -> None:
    if engine.cfg.api_key is None:
        return
    auth = request.headers.get("authorization", "")
    if auth != f"Bearer {engine.cfg.api_key}":
        raise APIError(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>' "
                            "with the server's --api-key", "authentication_error")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return _error_response(request, e.status, e.message, e.kind, e.param)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        parts = []
        for err in e.errors()[:3]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where or 'body'}: {err.get('msg')}")
        return _error_response(request, 422, "invalid request: " + "; ".join(parts), "invalid_request_error")


def _add_status_routes(app: FastAPI, engine: Engine) -> None:
    """/health, /info, /metrics (no key needed) and /v1/models."""
    @app.get("/health")
    async def health():
        if not engine.batcher.alive():
            raise APIError(503, "the batching worker is not running", "server_error")
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        return engine.info()

    @app.get("/metrics")
    async def metrics():
        lines = []
        for k, v in engine.batcher.stats.items():
            lines += [f"# TYPE mmbert_{k}_total counter", f"mmbert_{k}_total {v}"]
        lines += ["# TYPE mmbert_queue_size gauge", f"mmbert_queue_size {len(engine.batcher.pending)}"]
        return PlainTextResponse("\n".join(lines) + "\n")

    @app.get("/v1/models")
    async def models(request: Request):
        _check_key(engine, request)
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "mmbert"}]}



def _add_embedding_routes(app: FastAPI, engine: Engine) -> None:
    """OpenAI's POST /v1/embeddings and text-embeddings-inference's POST /embed."""
    @app.post("/v1/embeddings")
    async def openai_embeddings(body: OpenAIRequest, request: Request):
        _check_key(engine, request)
        if body.model is not None and body.model != engine.name:
            raise APIError(404, f"model {body.model!r} is not served here; this server serves {engine.name!r} "
                                f"(GET /v1/models)", "model_not_found", "model")
        if body.encoding_format not in ("float", "base64"):
            raise APIError(422, f"encoding_format {body.encoding_format!r} is not supported; use float or base64",
                           param="encoding_format")
        if body.dimensions is not None and body.dimensions != engine.dims:
            raise APIError(422, f"dimensions={body.dimensions} is not supported: this model's embeddings have "
                                f"{engine.dims} dimensions (no Matryoshka truncation); omit `dimensions` or send "
                                f"{engine.dims}", param="dimensions")
        ids = await asyncio.to_thread(engine.token_ids, body.input, "input", engine.cfg.auto_truncate)
        vecs = await engine.embed(request, ids)
        data = []
        for i, v in enumerate(vecs):
            if body.encoding_format == "base64":
                emb: Any = base64.b64encode(v.numpy().astype("<f4").tobytes()).decode("ascii")
            else:
                emb = v.tolist()
            data.append({"object": "embedding", "embedding": emb, "index": i})
        n = sum(len(x) for x in ids)
        return {"object": "list", "data": data, "model": engine.name,
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    @app.post("/embed")
    async def tei_embed(body: TEIRequest, request: Request):
        _check_key(engine, request)
        truncate = engine.cfg.auto_truncate if body.truncate is None else body.truncate
        ids = await asyncio.to_thread(engine.token_ids, body.inputs, "inputs", truncate)
        vecs = await engine.embed(request, ids)
        if body.normalize:
            vecs = torch.nn.functional.normalize(vecs, dim=-1)
        return vecs.tolist()


# ----------------------------------------------------------------------------- running it
def serve(cfg: ServeConfig) -> None:
    """Load the model, bind the port, and serve until SIGTERM / Ctrl-C."""
    import uvicorn

    engine = Engine(cfg)
    app = create_app(engine)
    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as e:
        raise ValueError(f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror}); pick another --port "
                         f"(0 picks a free one)") from e
    host, port = sock.getsockname()[:2]
    log.info("mmbert serve: %s (%d dims, %s, %s pooling) on http://%s:%d — OpenAI /v1/embeddings, TEI /embed",
             engine.name, engine.dims, engine.info()["model_dtype"], cfg.pooling, host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=cfg.graceful_timeout,
                                           access_log=False, lifespan="on"))
    server.run(sockets=[sock])  # on SIGTERM uvicorn finishes, then re-raises the signal (exit status 143)


def decode_base64(data: str) -> np.ndarray:
    """The float32 vector of a base64 `embedding` (what the OpenAI client does)."""
    return np.frombuffer(base64.b64decode(data), dtype="<f4")


__all__ = ["ServeConfig", "Engine", "Batcher", "Job", "gather", "create_app", "serve", "decode_base64"]
