"""`edgekd serve BUILD_DIR`: a build's model behind an HTTP JSON API, on starlette (ASGI) and uvicorn.

    POST /predict  {"inputs": [...], "top_k": 1}
                   images: base64 image files (PNG, JPEG, ...; a data: URL too) or (H, W[, C]) lists of 0-255
                   texts: strings
                   -> {"predictions": [{"label", "probability"[, "top"]}, ...]} or {"embeddings": [[...], ...]}
    GET  /health   -> {"status": "ok", ...}
    GET  /metadata -> manifest.json

A text-generation build serves instead (the prompt written as the build wrote its prompts: see
edgekd.runtime.Generator):
    POST /generate {"prompt": "..." | "messages": [{"role", "content"}, ...], "max_new_tokens": 128,
                    "temperature": 0, "top_p": 1, "top_k": 0, "stop": [...], "seed": 0, "stream": false}
                   -> {"text", "tokens", "prompt_tokens", "finish_reason": "stop" | "length"}
                   "stream": true: server-sent events, data: {"text": piece} per new token (the last one
                   with finish_reason, tokens and prompt_tokens), then data: [DONE]
    POST /v1/chat/completions, POST /v1/completions: OpenAI's request and response shapes, streamed
                   ("chunk" objects) or not; the model's name is the build's target (its folder's name)
Responses are generated token by token on the model's thread; concurrent responses take turns, one
token each, so all of them progress; a client that disconnects frees its turn at the next token. At
most `max_generations` responses at once; past that, 503 and Retry-After.

Every request is checked before it queues (body size, JSON, types, batch size, text length, image
pixels, decodability, empty strings): a bad one gets a 4xx and {"error": one line}; nothing answers
with a traceback. Requests in flight share model calls: while the model runs one batch, the requests
that arrive queue, and the next call takes all of them (up to the batch size); when the model is
free it waits at most `max_wait_ms` for more, and only while other requests are still being read and
checked, so batching happens when requests overlap and a lone request never waits for company.
Whether batching pays depends on the model and the CPU (an INT8 transformer can cost more per text in
a batch than alone), so at start the server times the model at batch sizes 1, 2, 4, ... up to
`max_batch` and batches up to the size with the lowest time per input (1: no batching).

The queue holds at most `max_queue` items; past that, 503 and Retry-After, so memory stays bounded
under any load. Model calls run one at a time on one thread of their own (onnxruntime and OpenVINO
release the GIL: the event loop keeps accepting)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import os
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import EdgeKDError, InputError

_SPEC_ENV = "EDGEKD_SERVE_SPEC"  # how uvicorn's worker processes get the spec (they import `app_from_env`)


@dataclass(frozen=True)
class ServeSpec:
    """What `edgekd serve` serves and its limits."""
    build: str
    threads: int | None = None  # intra-op threads per model call (None: the build's)
    max_batch: int = 32  # items per model call at most; the batch size used is measured at start
    calibrate: bool = True  # False: batch up to max_batch without measuring
    max_wait_ms: float = 1.0  # how long a batch waits for more items once the model is free
    max_queue: int = 256  # items waiting for the model; beyond: 503
    max_items: int = 64  # inputs per request
    max_body_bytes: int = 8 << 20
    max_text_chars: int = 10_000  # the tokenizer cuts at max_length tokens anyway: longer text is only cost
    max_image_pixels: int = 4096 * 4096  # decoded size: a small PNG can hold a huge image
    # image requests up to this size are decoded on the event loop: for small images a hop to a worker
    # thread costs more than the decoding (and its threads contend for the GIL under load)
    inline_bytes: int = 64 << 10
    # text generation: responses at once (each holds a key/value cache), new tokens per response at most
    max_generations: int = 8
    max_new_tokens: int = 1024

    def __post_init__(self):
        for name in ("max_batch", "max_queue", "max_items", "max_body_bytes", "max_text_chars", "max_image_pixels",
                     "max_generations", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise InputError(f"serve {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise InputError(f"serve max_wait_ms must be in [0, 1000], got {self.max_wait_ms}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"serve threads must be >= 1, got {self.threads}")
        if self.max_queue < self.max_items:
            raise InputError(f"serve max_queue ({self.max_queue}) must hold one full request (max_items "
                             f"{self.max_items}); raise max_queue")


class RequestError(Exception):
    """A request the server refuses: HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def choose_batch(model, max_batch: int, *, repeats: int = 5) -> tuple[int, dict[int, float]]:
    """The batch size in 1, 2, 4, ... max_batch with the lowest model time per input, and those times
    (ms per input, the best of `repeats` runs: the least disturbed by other work on the machine), on
    inputs of one size (images of the model's input shape, texts of max_length tokens): the cost of a
    batch itself, since texts of different lengths are grouped by length before they run."""
    import time

    import numpy as np

    pre = model.manifest["preprocessing"]
    if model.kind == "image":
        one = np.zeros(pre["input_shape"], np.float32)
    else:  # varied words: a text of one repeated token runs at its own (slower) speed
        one = " ".join([_SENTENCE] * pre["steps"][0]["max_length"])  # cut to max_length tokens
    sizes = [1]
    while sizes[-1] * 2 <= max_batch:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    best = {}
    for r in range(repeats + 1):  # sizes interleaved, so that other work on the machine slows them alike
        for n in sizes:
            t = time.perf_counter()
            model.forward([one] * n)
            if r:  # round 0 warms up: the first call at a new shape allocates
                best[n] = min(best.get(n, float("inf")), time.perf_counter() - t)
    per_input = {n: 1000 * b / n for n, b in best.items()}
    return min(per_input, key=per_input.get), per_input


_SENTENCE = "A small student model learns to match a large teacher on the same inputs."


class Batcher:
    """Merges the items of concurrent requests into model calls of at most `batch` items."""

    def __init__(self, model, spec: ServeSpec, *, batch: int | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self.model, self.spec = model, spec
        self.batch = batch or spec.max_batch
        self.waiting: deque = deque()  # (items, future)
        self.pending = 0  # items queued, not yet in a model call
        self.arriving = 0  # requests being read and checked: worth a short wait when the model is free
        self.calls = self.items_run = 0
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekd-model")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self._pool.shutdown(wait=False)

    async def submit(self, items: list):
        """The model's output rows for `items`; RequestError 503 when the queue is full."""
        if self._task is not None and self._task.done():  # a bug stopped the loop: say so, never hang
            raise RequestError(503, "the server's model loop has stopped; restart edgekd serve")
        if self.pending + len(items) > self.spec.max_queue:
            raise RequestError(503, f"the server is at capacity ({self.pending} inputs queued, at most "
                                    f"{self.spec.max_queue}); retry shortly")
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append((items, fut))
        self.pending += len(items)
        self._wake.set()
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.waiting:
                continue
            deadline = loop.time() + self.spec.max_wait_ms / 1000
            while self.arriving and self.pending < self.batch and (left := deadline - loop.time()) > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
                self._wake.clear()
            batch, n = [], 0
            while self.waiting and (not batch or n + len(self.waiting[0][0]) <= self.batch):
                items, fut = self.waiting.popleft()
                batch.append((items, fut))
                n += len(items)
            self.pending -= n
            if self.waiting:
                self._wake.set()  # more queued: go round again at once
            flat = [x for items, _ in batch for x in items]
            try:
                out = await loop.run_in_executor(self._pool, self.model.forward, flat)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the failure, the server goes on
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.calls += 1
            self.items_run += n
            i = 0
            for items, fut in batch:
                if not fut.done():  # a client that went away cancelled its future
                    fut.set_result(out[i:i + len(items)])
                i += len(items)


def create_app(spec: ServeSpec, *, model=None):
    """The ASGI app; loads the model unless one is given."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from . import runtime

    if model is None:
        model = runtime.load(spec.build, threads=spec.threads)
    if model.kind == "causal-lm":
        from .serve_lm import generation_app

        return generation_app(spec, model)
    size, timings = choose_batch(model, spec.max_batch) if spec.calibrate and spec.max_batch > 1 else (spec.max_batch, {})
    batcher = Batcher(model, spec, batch=size)
    fields = ("inputs", "top_k")

    async def predict(request):
        batcher.arriving += 1
        try:
            items, top_k = await checked_request(request)
        finally:
            batcher.arriving -= 1
        out = await batcher.submit(items)  # from arriving to queued with no await between
        if model.classifies:
            return JSONResponse({"predictions": model.postprocess(out, top_k=top_k)})
        return JSONResponse({"embeddings": out.tolist()})

    async def checked_request(request) -> tuple[list, int]:
        body = await _read_body(request, spec.max_body_bytes)
        data = _json_body(body, '{"inputs": [...]}')
        if not isinstance(data, dict) or "inputs" not in data:
            raise RequestError(422, 'the body must be a JSON object with "inputs": a list of inputs')
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise RequestError(422, f"unknown field '{unknown[0]}'; the fields are {', '.join(fields)}")
        inputs, top_k = data["inputs"], data.get("top_k", 1)
        if not isinstance(inputs, list):
            raise RequestError(422, f'"inputs" must be a list, got {_json_type(inputs)}; wrap one input in a list')
        if not inputs:
            raise RequestError(422, '"inputs" is empty; give at least one input')
        if len(inputs) > spec.max_items:
            raise RequestError(413, f"{len(inputs)} inputs in one request, at most {spec.max_items}; split the batch")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise RequestError(422, f'"top_k" must be a whole number >= 1, got {json.dumps(top_k)[:20]}')
        if model.kind == "image" and len(body) > spec.inline_bytes:
            items = await run_in_threadpool(_prepare_images, model, inputs, spec)  # decoding may take a while
        elif model.kind == "image":
            items = _prepare_images(model, inputs, spec)
        else:
            items = _prepare_texts(model, inputs, spec)
        return items, top_k

    async def health(request):
        return JSONResponse({"status": "ok", "model": model.manifest["model"], "task": model.task,
                             "batch": batcher.batch, "ms_per_input_by_batch": timings,
                             "queued": batcher.pending, "calls": batcher.calls, "inputs_run": batcher.items_run})

    async def metadata(request):
        return JSONResponse(model.manifest)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health),
                            Route("/metadata", metadata)],
                    exception_handlers={RequestError: _refused, HTTPException: _http_error, Exception: _failed},
                    lifespan=lifespan)
    app.state.batcher, app.state.model = batcher, model
    return app


async def _refused(request, exc: RequestError):
    from starlette.responses import JSONResponse

    headers = {"Retry-After": "1"} if exc.status == 503 else None
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)


async def _http_error(request, exc):
    from starlette.responses import JSONResponse

    paths = ", ".join(f"{'POST' if 'POST' in r.methods else 'GET'} {r.path}" for r in request.app.routes)
    msg = {404: f"no such path '{request.url.path}'; the paths are {paths}",
           405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return JSONResponse({"error": msg}, status_code=exc.status_code)


async def _failed(request, exc: Exception):
    from starlette.responses import JSONResponse

    # a bug or a runtime failure: one line for the client, no traceback
    return JSONResponse({"error": f"the model failed on this request ({_line(exc)})"}, status_code=500)


def _line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


async def _read_body(request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes (announced or streamed)."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise RequestError(413, f"the body is {int(size)} bytes, at most {limit}; send fewer or smaller inputs")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise RequestError(413, f"the body exceeds {limit} bytes; send fewer or smaller inputs")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_body(body: bytes, example: str):
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the body is not JSON ({str(e).splitlines()[0][:80]}); send {example}") from None


def _json_type(x) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(x), type(x).__name__)


def _prepare_texts(model, inputs: list, spec: ServeSpec) -> list:
    for i, x in enumerate(inputs):
        if isinstance(x, str) and len(x) > spec.max_text_chars:
            raise RequestError(413, f"input {i} has {len(x)} characters, at most {spec.max_text_chars}; "
                                    "send shorter text")
        if not isinstance(x, str):
            raise RequestError(422, f"input {i} is {_json_type(x)}, not a string; this model takes text")
    return _checked(model, inputs)


def _prepare_images(model, inputs: list, spec: ServeSpec) -> list:
    """base64 image files are decoded here (pixel count checked from the header before decoding);
    lists go to the runtime as arrays."""
    from PIL import Image, UnidentifiedImageError

    decoded = []
    for i, x in enumerate(inputs):
        if isinstance(x, str):
            b64 = x.split(",", 1)[1] if x.startswith("data:") and "," in x else x
            try:
                raw = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(422, f"input {i} is not valid base64; send an image file (PNG, JPEG, ...) "
                                        "as base64, or an (H, W[, C]) list of 0-255 values") from None
            try:
                im = Image.open(io.BytesIO(raw))
                w, h = im.size
                if w * h > spec.max_image_pixels:
                    raise RequestError(413, f"input {i} is a {w}x{h} image, at most {spec.max_image_pixels} pixels; "
                                            "send a smaller image")
                im.load()
            except RequestError:
                raise
            except Exception as e:  # noqa: BLE001 - Pillow raises many types for undecodable bytes
                why = "no image format recognised" if isinstance(e, UnidentifiedImageError) else \
                    (str(e).splitlines()[0][:80] or type(e).__name__)
                raise RequestError(422, f"input {i} is not an image Pillow can decode ({why}); "
                                        "send a PNG, JPEG or another common format") from None
            decoded.append(im)
        elif isinstance(x, list):
            decoded.append(x)
        else:
            raise RequestError(422, f"input {i} is {_json_type(x)}; send an image file as base64 or an "
                                    "(H, W[, C]) list of 0-255 values")
    return _checked(model, decoded)


def _checked(model, inputs: list) -> list:
    try:
        return model.prepare(inputs)
    except EdgeKDError as e:
        raise RequestError(422, str(e)) from None


def app_from_env():
    """uvicorn's factory in each worker process (`--workers N`)."""
    return create_app(ServeSpec(**json.loads(os.environ[_SPEC_ENV])))


def _check_port(host: str, port: int) -> None:
    """A port another process holds is one line before the banner, not uvicorn's error after it. (A
    race remains between this check and uvicorn's bind; it ends in uvicorn's own message.)"""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise InputError(f"--host '{host}' cannot be resolved ({e.strerror}); give an address such as 127.0.0.1") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is not "busy"
        try:
            s.bind(addr)
        except OSError as e:
            raise InputError(f"cannot listen on {host}:{port} ({e.strerror}); another process holds the port: "
                             "pass --port with a free one") from None


def serve(spec: ServeSpec, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, log=print) -> None:
    """Run the server until interrupted. The model is loaded here first, so a bad build folder stops
    with one line before any process starts."""
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise InputError("edgekd serve needs starlette and uvicorn: pip install 'edgekd[serve]'") from None
    from . import runtime

    model = runtime.load(spec.build, threads=spec.threads)
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    _check_port(host, port)
    paths = "POST /generate, POST /v1/chat/completions, POST /v1/completions" if model.kind == "causal-lm" \
        else "POST /predict"
    log(f"edgekd serve: {Path(spec.build) / model.manifest['model']} ({model.task}) on http://{host}:{port} "
        f"with {workers} worker(s); {paths}, GET /health, GET /metadata")
    if workers == 1:
        uvicorn.run(create_app(spec, model=model), host=host, port=port, log_level="warning", access_log=False)
    else:
        os.environ[_SPEC_ENV] = json.dumps(asdict(spec))
        uvicorn.run("edgekd.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level="warning", access_log=False)
