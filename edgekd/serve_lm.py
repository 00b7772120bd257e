"""`edgekd serve` for a text-generation build: POST /generate (JSON, or server-sent events with
"stream": true), and OpenAI's /v1/chat/completions and /v1/completions shapes, on the model's one thread
a token per turn (edgekd.serve builds the app; this module is its generation half)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from pathlib import Path

from .errors import EdgeKDError

from .serve import RequestError, ServeSpec, _failed, _http_error, _json_body, _json_type, _line, _read_body, _refused


class Generations:
    """Text generation on the model's one thread, a token per turn: concurrent responses interleave (all
    progress, none waits for another to finish), and one whose client went away stops at its next
    token. At most spec.max_generations responses at once (each holds a key/value cache); beyond, 503."""

    def __init__(self, spec: ServeSpec):
        from concurrent.futures import ThreadPoolExecutor

        self.spec = spec
        self.active = self.requests = self.tokens = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekd-model")

    def admit(self):
        """A turn for one response, or RequestError 503; returns its release (safe to call twice)."""
        if self.active >= self.spec.max_generations:
            raise RequestError(503, f"the server is at capacity ({self.active} responses being generated, at most "
                                    f"{self.spec.max_generations}); retry shortly")
        self.active += 1
        self.requests += 1
        done = []

        def release():
            if not done:
                done.append(True)
                self.active -= 1
        return release

    def pieces(self, stream, request, release):
        """The text pieces of `stream` (a runtime.TextStream), each token made on the model's thread; ends
        when the response is complete or the client has gone. `release` runs when it ends, or when it is
        dropped unread (a client gone before the first piece)."""
        agen = self._pieces(stream, request, release)
        weakref.finalize(agen, release)
        return agen

    async def _pieces(self, stream, request, release):
        loop = asyncio.get_running_loop()
        try:
            while True:
                piece = await loop.run_in_executor(self._pool, next, stream, None)
                if piece is None:
                    return
                self.tokens += 1
                yield piece
                if stream.finish_reason or await request.is_disconnected():
                    return
        finally:
            try:
                self._pool.submit(stream.close)  # queued behind the token in flight: one thread, in order
            except RuntimeError:  # the server has stopped: no model thread is left to race with
                stream.close()
            release()

    def stop(self) -> None:
        """Ends the model's thread: tokens queued are dropped, the one in flight is waited for."""
        self._pool.shutdown(wait=True, cancel_futures=True)


_GENERATE = ("prompt", "messages", "max_new_tokens", "temperature", "top_p", "top_k", "stop", "seed", "stream")
_CHAT = ("messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "seed",
         "stream", "stream_options", "n", "user")
_COMPLETION = ("prompt", *(f for f in _CHAT if f not in ("messages", "max_completion_tokens")))
_MAX_STOPS = 16
_DEFAULT_NEW_TOKENS = 128  # a request that does not say


def generation_app(spec: ServeSpec, model):
    """The app of a text-generation build: /generate and OpenAI's /v1/chat/completions and /v1/completions."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    gens = Generations(spec)
    build = Path(spec.build)
    name = (build if build.suffix != ".json" else build.parent).resolve().name  # the folder is named by its target

    async def start(request, fields: tuple, example: str, *, needs: str, temperature: float):
        """The request checked (body, fields, limits, prompt length), then a turn and the model's stream:
        (stream, its turn's release, whether to stream)."""
        data = _json_body(await _read_body(request, spec.max_body_bytes), example)
        if not isinstance(data, dict):
            raise RequestError(422, f"the body must be a JSON object, e.g. {example}")
        if unknown := sorted(set(data) - set(fields)):
            raise RequestError(422, f"unknown field '{unknown[0]}'; the fields are {', '.join(fields)}")
        prompt, opts = _generation_request(data, spec, needs=needs, temperature=temperature)
        try:
            ids = model.prompt_ids(prompt)
        except EdgeKDError as e:
            raise RequestError(422, str(e)) from None
        if len(ids) >= model.context:
            raise RequestError(413, f"the prompt is {len(ids)} tokens, at most {model.context - 1} (the model was "
                                    f"distilled on {model.context}-token sequences, prompt and response); send a "
                                    "shorter prompt")
        if "max_new_tokens" not in opts:  # the default fits the model's positions after any prompt it takes
            room = model.lm.context - len(ids) if model.lm.context else _DEFAULT_NEW_TOKENS
            opts["max_new_tokens"] = max(1, min(_DEFAULT_NEW_TOKENS, spec.max_new_tokens, room))
        try:
            stream = model.stream(prompt, **opts)
        except EdgeKDError as e:
            raise RequestError(422, str(e)) from None
        return stream, gens.admit(), bool(data.get("stream", False))

    async def generate(request):
        stream, release, streamed = await start(request, _GENERATE, '{"prompt": "..."}',
                                                needs='"prompt" (or "messages")', temperature=0.0)
        pieces = gens.pieces(stream, request, release)
        if not streamed:
            await _drain(pieces)
            return JSONResponse(_summary(stream))

        async def events():
            async for piece in pieces:
                last = {k: v for k, v in _summary(stream).items() if k != "text"} if stream.finish_reason else {}
                yield _event({"text": piece, **last})
        return _sse(events(), pieces)

    async def chat(request):
        return await openai(request, chat=True)

    async def completions(request):
        return await openai(request, chat=False)

    async def openai(request, *, chat: bool):
        fields, example = (_CHAT, '{"messages": [{"role": "user", "content": "..."}]}') if chat else \
            (_COMPLETION, '{"prompt": "..."}')
        stream, release, streamed = await start(request, fields, example, needs='"messages"' if chat else '"prompt"',
                                                temperature=1.0)  # OpenAI's default
        pieces = gens.pieces(stream, request, release)
        kind = "chat.completion" if chat else "text_completion"
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "object": kind,
                "created": int(time.time()), "model": name}

        def choice(text: str | None, finish):
            if not chat:
                return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            if not streamed:
                return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                        "finish_reason": finish}
            return {"index": 0, "delta": {} if text is None else {"content": text}, "logprobs": None,
                    "finish_reason": finish}

        if not streamed:
            await _drain(pieces)
            return JSONResponse({**head, "choices": [choice(stream.text, stream.finish_reason)], "usage": _usage(stream)})

        async def events():
            chunk = {**head, "object": f"{kind}.chunk"}
            if chat:  # OpenAI opens a streamed chat with the role
                yield _event({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                    "logprobs": None, "finish_reason": None}]})
            async for piece in pieces:
                yield _event({**chunk, "choices": [choice(piece, None)]})
            if stream.finish_reason:
                yield _event({**chunk, "choices": [choice(None if chat else "", stream.finish_reason)],
                              "usage": _usage(stream)})
        return _sse(events(), pieces)

    async def predict(request):
        raise RequestError(404, "this build generates text (task text-generation), it has no /predict; POST "
                                '{"prompt": "..."} to /generate, or use /v1/chat/completions or /v1/completions')

    async def health(request):
        return JSONResponse({"status": "ok", "model": model.manifest["model"], "task": model.task,
                             "generating": gens.active, "max_generations": spec.max_generations,
                             "requests": gens.requests, "tokens": gens.tokens})

    async def metadata(request):
        return JSONResponse(model.manifest)

    @asynccontextmanager
    async def lifespan(app):
        yield
        gens.stop()

    app = Starlette(routes=[Route("/generate", generate, methods=["POST"]),
                            Route("/v1/chat/completions", chat, methods=["POST"]),
                            Route("/v1/completions", completions, methods=["POST"]),
                            Route("/predict", predict, methods=["POST"]), Route("/health", health),
                            Route("/metadata", metadata)],
                    exception_handlers={RequestError: _refused, HTTPException: _http_error, Exception: _failed},
                    lifespan=lifespan)
    app.state.generations, app.state.model = gens, model
    return app


def _generation_request(data: dict, spec: ServeSpec, *, needs: str, temperature: float) -> tuple:
    """(prompt or messages, Generator.stream's options) from a request's fields, in /generate's or
    OpenAI's names; types and the server's limits checked here, values by the runtime."""
    if "prompt" in data and "messages" in data:
        raise RequestError(422, 'give "prompt" or "messages", not both')
    field = "messages" if "messages" in data else "prompt" if "prompt" in data else None
    if field is None:
        raise RequestError(422, f"the body has no {needs}; say what to generate from")
    prompt = data[field]
    if field == "prompt":
        if isinstance(prompt, list) and len(prompt) == 1:  # OpenAI's completions take a batch; one is what runs
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise RequestError(422, f'"prompt" must be a string, got {_json_type(prompt)}')
        chars = len(prompt)
    else:
        if not isinstance(prompt, list) or not prompt:
            raise RequestError(422, f'"messages" must be a non-empty list of {{"role", "content"}}, got '
                                    f"{_json_type(prompt)}")
        chars = sum(len(m["content"]) for m in prompt if isinstance(m, dict) and isinstance(m.get("content"), str))
    if chars > spec.max_text_chars:
        raise RequestError(413, f"the prompt has {chars} characters, at most {spec.max_text_chars}; send shorter text")
    opts = {"temperature": temperature}
    for key in ("max_new_tokens", "max_tokens", "max_completion_tokens"):
        if data.get(key) is not None:
            n = data[key]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise RequestError(422, f'"{key}" must be a whole number >= 1, got {json.dumps(n)[:20]}')
            if n > spec.max_new_tokens:
                raise RequestError(422, f'"{key}" is {n}, this server makes at most {spec.max_new_tokens} new tokens '
                                        "per response; ask for fewer")
            opts["max_new_tokens"] = n
    for key in ("temperature", "top_p"):
        if data.get(key) is not None:
            if isinstance(data[key], bool) or not isinstance(data[key], (int, float)):
                raise RequestError(422, f'"{key}" must be a number, got {_json_type(data[key])}')
            opts[key] = data[key]
    for key in ("top_k", "seed"):
        if data.get(key) is not None:
            if isinstance(data[key], bool) or not isinstance(data[key], int):
                raise RequestError(422, f'"{key}" must be a whole number, got {json.dumps(data[key])[:20]}')
            opts[key] = data[key]
    stop = data.get("stop")
    if stop is not None:
        if isinstance(stop, list) and len(stop) > _MAX_STOPS:
            raise RequestError(422, f'"stop" has {len(stop)} strings, at most {_MAX_STOPS}')
        if not isinstance(stop, (str, list)):
            raise RequestError(422, f'"stop" must be a string or a list of strings, got {_json_type(stop)}')
        opts["stop"] = stop
    if not isinstance(data.get("stream", False), bool):
        raise RequestError(422, f'"stream" must be true or false, got {_json_type(data["stream"])}')
    if data.get("n", 1) != 1:
        raise RequestError(422, f'"n" must be 1 (one response per request), got {json.dumps(data["n"])[:20]}')
    return prompt, opts


async def _drain(pieces) -> None:
    from contextlib import aclosing

    async with aclosing(pieces):
        async for _ in pieces:
            pass


def _summary(stream) -> dict:
    return {"text": stream.text, "tokens": stream.tokens, "prompt_tokens": stream.prompt_tokens,
            "finish_reason": stream.finish_reason}


def _usage(stream) -> dict:
    return {"prompt_tokens": stream.prompt_tokens, "completion_tokens": stream.tokens,
            "total_tokens": stream.prompt_tokens + stream.tokens}


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _sse(events, pieces):
    """Server-sent events, ending in [DONE]; a failure after the headers went out is an error event."""
    from starlette.responses import StreamingResponse

    async def body():
        try:
            async for e in events:
                yield e
        except EdgeKDError as e:
            yield _event({"error": str(e)})
        except Exception as e:  # noqa: BLE001 - the status line is sent: the client gets one line, not a traceback
            yield _event({"error": f"the model failed on this request ({_line(e)})"})
        finally:
            await pieces.aclose()
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
