"""`glass-edge serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over one GlassLlama.

Routes: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions (stream=true
gives server-sent events: `data: {chunk}` ... `data: [DONE]`). Requests may carry a `glass` object,
{"density": 0.4, "method": "a-glass"}, that applies to that request only; every response carries a
`glass` object with the effective settings and the generation's timings.

One model, one llama.cpp context: every generation runs, one at a time and in arrival order, on a
single worker thread (the Engine below), so the event loop stays free to accept and queue requests.
A stream whose client goes away is stopped at its next token, and the worker moves on.
"""
# (no `from __future__ import annotations`: FastAPI resolves the routes' annotations at run time,
# and the routes are defined inside create_app)
import asyncio
import json
import os
import queue
import socket
import sys
import threading
from pathlib import Path
from typing import List, Literal, Optional, Union

import llama_cpp

from .errors import UserError

try:
    import fastapi  # noqa: F401
    import uvicorn
    from pydantic import BaseModel, ConfigDict, Field, ValidationError
except ImportError:  # cli.main turns this into one line
    raise UserError("the server needs FastAPI and uvicorn: pip install 'glass-edge[server]'") from None

from .llama import GlassLlama
from .selection import check_density, check_method

# ----------------------------------------------------------------------------------------------
# errors, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}
# ----------------------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


class ContextOverflow(ValueError):
    """A request whose prompt, or prompt plus max_tokens, does not fit the context."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def _validation_error(e: ValidationError) -> ApiError:
    err = e.errors()[0]
    # a field path like messages.0.content; pydantic's union-member tags ("str", "list[int]") dropped
    names = [str(p) for p in err["loc"] if isinstance(p, int) or (p.isidentifier() and p not in _TYPE_TAGS)]
    param = ".".join(names) or None
    message = f"{param}: {err['msg']}" if param else err["msg"]
    return ApiError(400, message, param=param)


# ----------------------------------------------------------------------------------------------
# the model: GlassLlama that refuses (rather than silently shortens) what cannot fit its context
# ----------------------------------------------------------------------------------------------


class ServedLlama(GlassLlama):
    """Every chat or text completion reaches create_completion with its final prompt: check the
    context budget there, and count the prompt and generated tokens for streamed usage."""

    last_prompt_tokens = 0
    last_completion_tokens = 0

    def create_completion(self, prompt, *args, **kwargs):
        if isinstance(prompt, str):
            n_prompt = len(self.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))
        else:
            n_prompt = len(prompt)
        n_ctx, max_tokens = self.n_ctx(), kwargs.get("max_tokens")
        if n_prompt >= n_ctx:
            raise ContextOverflow(f"the prompt is {n_prompt} tokens, but this server's context holds "
                                  f"{n_ctx} tokens (prompt and reply together)", "prompt")
        if max_tokens is not None and max_tokens > 0 and n_prompt + max_tokens > n_ctx:
            raise ContextOverflow(f"the prompt ({n_prompt} tokens) plus max_tokens ({max_tokens}) exceed "
                                  f"this server's context of {n_ctx} tokens", "max_tokens")
        self.last_prompt_tokens, self.last_completion_tokens = n_prompt, 0
        return super().create_completion(prompt, *args, **kwargs)

    def generate(self, tokens, *args, **kwargs):
        for token in super().generate(tokens, *args, **kwargs):
            if not llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
                self.last_completion_tokens += 1
            yield token


def glass_report(llm, density: float, method: str) -> dict:
    """The `glass` object of a response: effective settings and the generation's timings."""
    t = llm.timings
    kept = llm.mask_densities()
    overlap = llm.mask_overlap()
    return {
        "density": density, "method": method,
        "prompt_tokens": t.prompt_tokens, "prompt_ms": round(t.prompt_ms, 3),
        "prompt_tokens_per_second": round(t.prompt_tps, 3),
        "eval_tokens": t.eval_tokens, "eval_ms": round(t.eval_ms, 3),
        "eval_tokens_per_second": round(t.eval_tps, 3),
        "mask_ms": round(t.mask_ms, 3),
        "mask_density": round(sum(kept) / len(kept), 6) if kept else None,
        "mask_overlap": round(sum(overlap) / len(overlap), 6) if overlap else None,
    }


# ----------------------------------------------------------------------------------------------
# the engine: one worker thread runs every generation, in arrival order
# ----------------------------------------------------------------------------------------------


class Engine:
    def __init__(self, llm):
        self.llm = llm
        self._jobs: queue.Queue = queue.Queue()
        self._closing = threading.Event()
        self.running = False
        self.cancelled_streams = 0
        self._thread = threading.Thread(target=self._work, name="glass-edge-engine", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 60.0) -> None:
        """Run no more jobs; wait for the one running (so that the model is not freed under it)."""
        self._closing.set()
        self._jobs.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._closing.is_set():
                return
            self.running = True
            try:
                job()
            finally:
                self.running = False

    @property
    def queued(self) -> int:
        return self._jobs.qsize()

    def _submit(self, job) -> None:
        self._jobs.put(job)

    async def call(self, fn):
        """fn(llm), run on the worker; its result or exception comes back here."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(ok, value):
            if not future.done():  # the request may have been cancelled meanwhile
                future.set_result(value) if ok else future.set_exception(value)

        def job():
            try:
                result = (True, fn(self.llm))
            except Exception as e:  # noqa: BLE001 -- handed to the request, which maps it to a reply
                result = (False, e)
            _post(loop, settle, *result)

        self._submit(job)
        return await future

    async def stream(self, fn):
        """Chunks of the iterator fn(llm) returns, produced on the worker. Then one ("end", report)
        item. Leaving the async iterator early (the client went away) stops the generation."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def job():
            chunks = None
            try:
                chunks, report = fn(self.llm)
                for chunk in chunks:
                    if stop.is_set() or self._closing.is_set():
                        self.cancelled_streams += 1
                        break
                    _post(loop, items.put_nowait, ("chunk", chunk))
                else:
                    _post(loop, items.put_nowait, ("end", report()))
            except Exception as e:  # noqa: BLE001
                _post(loop, items.put_nowait, ("error", e))
            finally:
                if hasattr(chunks, "close"):
                    chunks.close()  # restores per-request overrides

        self._submit(job)
        try:
            while True:
                kind, value = await items.get()
                if kind == "error":
                    raise value
                yield kind, value
                if kind == "end":
                    return
        finally:
            stop.set()


def _post(loop, fn, *args) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the event loop is gone (server shutting down)
        pass


# ----------------------------------------------------------------------------------------------
# request bodies (OpenAI field names; unknown fields are ignored, as most servers do)
# ----------------------------------------------------------------------------------------------


class GlassOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    density: Optional[float] = None
    method: Optional[str] = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: Optional[str] = None
    temperature: float = Field(0.8, ge=0, le=2)
    top_p: float = Field(0.95, ge=0, le=1)
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.05, ge=0, le=1)
    stop: Optional[Union[str, List[str]]] = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repeat_penalty: float = Field(1.0, gt=0)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    glass: Optional[GlassOptions] = None

    def llama_kwargs(self) -> dict:
        return dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                    stop=self.stop or [], seed=self.seed, presence_penalty=self.presence_penalty,
                    frequency_penalty=self.frequency_penalty, repeat_penalty=self.repeat_penalty)


class CompletionRequest(Sampling):
    prompt: Union[str, List[str], List[int]]
    max_tokens: Optional[int] = Field(16, ge=1)
    echo: bool = False
    logprobs: Optional[int] = None
    suffix: Optional[str] = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Optional[Union[str, List[TextPart]]] = None
    name: Optional[str] = None

    def as_dict(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content or ""}


class ChatRequest(Sampling):
    messages: List[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: Optional[bool] = None
    tools: Optional[list] = None


def _parse(model_cls, raw: bytes):
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        req = model_cls.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e) from None
    if req.glass is not None:
        try:
            if req.glass.density is not None:
                check_density(req.glass.density)
        except ValueError as e:
            raise ApiError(400, str(e), param="glass.density") from None
        try:
            if req.glass.method is not None:
                check_method(req.glass.method)
        except ValueError as e:
            raise ApiError(400, str(e), param="glass.method") from None
    if getattr(req, "logprobs", None):
        raise ApiError(400, "logprobs are not supported by this server", param="logprobs")
    if getattr(req, "tools", None):
        raise ApiError(400, "tools are not supported by this server", param="tools")
    if getattr(req, "suffix", None):
        raise ApiError(400, "suffix is not supported by this server", param="suffix")
    return req


def _single_prompt(prompt):
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        if len(prompt) != 1:
            raise ApiError(400, "this server takes one prompt per request", param="prompt")
        return prompt[0]
    return prompt


# ----------------------------------------------------------------------------------------------
# the application
# ----------------------------------------------------------------------------------------------


def model_id(model_path: str) -> str:
    return Path(model_path).stem


def create_app(llm, model_name: Optional[str] = None):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    engine = Engine(llm)
    name = model_name or model_id(llm.model_path)
    defaults = {"density": llm.density, "method": llm.method}  # llm's own change during a request
    created = int(os.path.getmtime(llm.model_path))
    app = FastAPI(title="glass-edge", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    def error_response(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc):  # 404 / 405 in OpenAI's shape
        return error_response(ApiError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def unexpected_error(_request, exc):
        return error_response(ApiError(500, f"internal error: {exc}", kind="server_error"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, **defaults,
                "n_ctx": llm.n_ctx(), "queued": engine.queued, "running": engine.running,
                "cancelled_streams": engine.cancelled_streams}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "glass-edge"}]}

    def as_api_error(e: Exception) -> ApiError:
        if isinstance(e, ApiError):
            return e
        if isinstance(e, ContextOverflow):
            return ApiError(400, str(e), param=e.param, code="context_length_exceeded")
        import jinja2
        if isinstance(e, (ValueError, jinja2.TemplateError)):
            return ApiError(400, str(e))
        return ApiError(500, f"internal error: {e}", kind="server_error")

    async def respond(request: Request, req, start):
        """Run start(llm, density, method) -> llama-cpp-python result, with the request's overrides."""
        glass = req.glass or GlassOptions()

        def run(llm):
            density = glass.density if glass.density is not None else llm.density
            method = glass.method if glass.method is not None else llm.method
            result = start(llm, glass.density, glass.method)
            if isinstance(result, dict):
                result["glass"] = glass_report(llm, density, method)
                return result
            return result, lambda: {
                "glass": glass_report(llm, density, method),
                "usage": {"prompt_tokens": llm.last_prompt_tokens,
                          "completion_tokens": llm.last_completion_tokens,
                          "total_tokens": llm.last_prompt_tokens + llm.last_completion_tokens}}

        if not req.stream:
            try:
                return await engine.call(run)
            except Exception as e:  # noqa: BLE001
                return error_response(as_api_error(e))
        items = engine.stream(run)
        try:  # the first item settles the reply's status: an error before any token is a 4xx
            first = await items.__anext__()
        except Exception as e:  # noqa: BLE001
            await items.aclose()
            return error_response(as_api_error(e))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_sse(first, items, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _sse(first, items, include_usage):
        held = None  # one chunk is held back so the last one can carry the `glass` report
        try:
            item = first
            while True:
                kind, value = item
                if kind == "end":
                    if held is not None:
                        held["glass"] = value["glass"]
                        yield _event(held)
                        if include_usage:
                            yield _event({**{k: held[k] for k in ("id", "object", "created", "model")},
                                          "choices": [], "usage": value["usage"]})
                    yield "data: [DONE]\n\n"
                    return
                if held is not None:
                    yield _event(held)
                held = value
                item = await items.__anext__()
        except Exception as e:  # noqa: BLE001 -- after the headers, an error can only be an event
            yield _event(as_api_error(e).body())
        finally:
            await items.aclose()

    @app.post("/v1/completions")
    async def completions(request: Request):
        try:
            req = _parse(CompletionRequest, await request.body())
            prompt = _single_prompt(req.prompt)
        except ApiError as e:
            return error_response(e)

        def start(llm, density, method):
            return llm.create_completion(prompt, max_tokens=req.max_tokens, echo=req.echo, stream=req.stream,
                                         model=name, density=density, method=method, **req.llama_kwargs())
        return await respond(request, req, start)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            req = _parse(ChatRequest, await request.body())
        except ApiError as e:
            return error_response(e)
        messages = [m.as_dict() for m in req.messages]
        max_tokens = req.max_completion_tokens or req.max_tokens

        def start(llm, density, method):
            try:
                return llm.create_chat_completion(messages, max_tokens=max_tokens, stream=req.stream, model=name,
                                                  density=density, method=method, **req.llama_kwargs())
            except ContextOverflow as e:  # the prompt a chat request makes is its messages
                e.param = "messages" if e.param == "prompt" else e.param
                raise
        return await respond(request, req, start)

    return app


def _event(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# ----------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------


def _listen(host: str, port: int) -> socket.socket:
    """Bind before loading the model, so a taken port fails at once with one clear line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def serve(args) -> int:
    from .run import resolve_model

    model = resolve_model(args.model)
    sock = _listen(args.host, args.port)
    kwargs = dict(n_ctx=args.ctx_size, seed=args.seed, verbose=args.verbose, density=args.density,
                  method=args.method, lam=args.lam, prior=args.prior)
    if args.threads:
        kwargs.update(n_threads=args.threads, n_threads_batch=args.threads)
    try:
        llm = ServedLlama(model, **kwargs)
    except ValueError as e:  # llama-cpp-python load failures, bad priors
        raise UserError(f"cannot load {model}: {e}") from None
    app = create_app(llm, args.alias)
    port = sock.getsockname()[1]
    print(f"glass-edge: serving {model_id(model) if args.alias is None else args.alias} "
          f"(density {llm.density:g}, method {llm.method}) on http://{args.host}:{port}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=1)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        app.state.engine.close()
    return 0
