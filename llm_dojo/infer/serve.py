"""`dojo serve`: an OpenAI-compatible HTTP server for a model (optionally with an adapter).

    dojo serve --adapter outputs/run/adapter [--port 8000] [--api-key KEY] [--max-batch-size 8]

Endpoints: POST /v1/chat/completions (streaming with `"stream": true`), POST /v1/completions (raw prompt, no chat
template), GET /v1/models, GET /health. Any OpenAI client works:

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything")

Backends:
  hf    (default) transformers `generate()` in ONE worker thread fed by a queue. The worker takes the oldest request
        plus every queued request with the same sampling settings (up to --max-batch-size) and generates them as one
        left-padded batch: dynamic batching, but never two model calls at once. Each row stops at its own end-of-turn
        token or max_tokens. The event loop only parses requests and relays tokens, so /health answers during load.
  vllm  vLLM's AsyncLLMEngine (continuous batching, paged attention); needs `pip install vllm` and a CUDA GPU.

Every error is JSON in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with a 4xx status for bad
requests (400 invalid fields or JSON, 401 API key, 404 unknown model or route, 413 body over --max-body-bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Literal, Optional, Union

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_dojo.infer.common import (
    IncrementalDecoder,
    RowStreamer,
    add_model_arguments,
    encode_chat,
    encode_text,
    generation_config,
    left_padded_batch,
    load_from_args,
    pad_token_id,
    stop_token_ids,
)

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # 1 MiB
DEFAULT_MAX_TOKENS = 512  # when a chat request does not say (capped by what is left of the context window)
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


# --------------------------------------------------------------------------------------------------- engine events


@dataclass
class TextDelta:
    """New text for one request."""

    text: str


@dataclass
class Finished:
    """The request is done: why, and how many tokens it used (completion tokens include the end-of-turn token)."""

    finish_reason: str  # "stop" (end of turn) or "length" (max_tokens)
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    """Generation raised; the message goes back to the client as a server error."""

    message: str


Event = Union[TextDelta, Finished, Failed]


# --------------------------------------------------------------------------------------------------- HF backend


@dataclass
class _Request:
    """One queued generation, plus what the worker thread needs to talk back to the event loop."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    cancelled: bool = False  # set by the event loop when the client went away
    # worker-side state
    completion_tokens: int = 0
    finish_reason: Optional[str] = None
    decoder: Any = None

    @property
    def sampling_key(self) -> tuple:
        """Requests with the same key can share one generate() call."""
        return (0.0, 1.0) if self.temperature == 0 else (self.temperature, self.top_p)

    def send(self, event: Event) -> None:
        """Hand an event to the request's coroutine (called from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancelled = True


class _RowLimits:
    """Stopping criterion: a row ends at its own max_tokens, or when its client has gone away."""

    def __init__(self, requests: list[_Request], prompt_width: int):
        self.requests, self.prompt_width = requests, prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_width
        done = [r.cancelled or generated >= r.max_tokens for r in self.requests]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFEngine:
    """transformers generation behind a queue: one worker thread, dynamic batches of compatible requests."""

    def __init__(self, model, tokenizer, model_id: str, *, max_batch_size: int = 8):
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.max_batch_size = max(1, max_batch_size)
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.context_window = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.batches_run = 0
        self.largest_batch = 0
        self._queue: queue.Queue = queue.Queue()
        self._deferred: list[_Request] = []  # taken from the queue but not batchable with the previous batch
        self._busy = threading.Lock()  # held while the model runs: proof that calls never overlap
        self._worker = threading.Thread(target=self._work, name="dojo-generate", daemon=True)
        self._worker.start()

    # ---- called from the event loop

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return encode_chat(self.tokenizer, messages)

    def encode_text(self, text: str) -> list[int]:
        return encode_text(self.tokenizer, text)

    @property
    def queued(self) -> int:
        return self._queue.qsize() + len(self._deferred)

    async def generate(self, prompt_ids: list[int], *, max_tokens: int, temperature: float,
                       top_p: float) -> AsyncIterator[Event]:
        """Queue one generation and yield its events; closing the iterator early cancels the request."""
        request = _Request(prompt_ids, max_tokens, temperature, top_p, asyncio.get_running_loop(), asyncio.Queue())
        self._queue.put(request)
        try:
            while True:
                event = await request.events.get()
                yield event
                if isinstance(event, (Finished, Failed)):
                    return
        finally:
            request.cancelled = True  # no-op when finished; stops the row when the client disconnected

    def close(self) -> None:
        """Stop the worker thread after the current batch."""
        self._queue.put(None)

    # ---- the worker thread

    def _next_batch(self) -> Optional[list[_Request]]:
        """The oldest request and every waiting request that can share its generate() call."""
        first = self._deferred.pop(0) if self._deferred else self._queue.get()
        if first is None:
            return None
        batch, kept = [first], []
        for request in self._deferred:
            (batch if len(batch) < self.max_batch_size and request.sampling_key == first.sampling_key else kept).append(request)
        self._deferred = kept
        while len(batch) < self.max_batch_size:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                break
            if request is None:  # close() while busy: finish this batch, then stop
                self._queue.put(None)
                break
            (batch if request.sampling_key == first.sampling_key else self._deferred).append(request)
        return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            batch = [r for r in batch if not r.cancelled]
            if not batch:
                continue
            try:
                with self._busy:
                    self._run_batch(batch)
            except Exception as error:  # noqa: BLE001 - report to the clients, keep serving
                logger.exception("generation failed for a batch of %d", len(batch))
                for request in batch:
                    request.send(Failed(f"generation failed: {type(error).__name__}: {error}"))

    def _run_batch(self, batch: list[_Request]) -> None:
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        inputs = left_padded_batch(self.tokenizer, [r.prompt_ids for r in batch], self.model.device)
        for request in batch:
            request.decoder = IncrementalDecoder(self.tokenizer)

        def on_token(row: int, token_id: int) -> None:
            request = batch[row]
            if request.finish_reason is not None:  # the row already ended; later tokens are padding
                return
            request.completion_tokens += 1
            if token_id in self.stop_ids:
                request.finish_reason = "stop"
                return
            delta = request.decoder.add(token_id)
            if delta and not request.cancelled:
                request.send(TextDelta(delta))
            if request.completion_tokens >= request.max_tokens:
                request.finish_reason = "length"

        first = batch[0]
        config = generation_config(self.stop_ids, pad_token_id(self.tokenizer),
                                   max_new_tokens=max(r.max_tokens for r in batch),
                                   temperature=first.temperature, top_p=first.top_p)
        from transformers import StoppingCriteriaList

        with torch.inference_mode():
            self.model.generate(**inputs, generation_config=config,
                                stopping_criteria=StoppingCriteriaList([_RowLimits(batch, inputs["input_ids"].shape[1])]),
                                streamer=RowStreamer(len(batch), self.stop_ids, on_token))
        for request in batch:
            request.send(Finished(request.finish_reason or "length", len(request.prompt_ids), request.completion_tokens))


# --------------------------------------------------------------------------------------------------- vLLM backend


class VLLMEngine:
    """vLLM's AsyncLLMEngine behind the same interface as HFEngine (continuous batching on a CUDA GPU)."""

    def __init__(self, model: str, adapter: Optional[str], tokenizer, model_id: str, *, max_batch_size: int,
                 dtype: str = "auto", load_in_4bit: bool = False, trust_remote_code: bool = False):
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        self.tokenizer, self.model_id = tokenizer, model_id
        self.stop_ids = stop_token_ids(tokenizer)
        engine_args: dict[str, Any] = {"model": model, "max_num_seqs": max_batch_size,
                                       "dtype": {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(dtype, "auto"),
                                       "trust_remote_code": trust_remote_code}
        if load_in_4bit:
            engine_args["quantization"] = "bitsandbytes"
        self.lora_request = None
        if adapter:
            from vllm.lora.request import LoRARequest

            rank = json.loads((Path(adapter) / "adapter_config.json").read_text())["r"]
            engine_args.update(enable_lora=True, max_lora_rank=max(16, rank))
            self.lora_request = LoRARequest(model_id, 1, str(adapter))
        self.engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**engine_args))
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.context_window = int(getattr(config, "max_position_embeddings", 0) or 2048)
        self.queued = 0

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return encode_chat(self.tokenizer, messages)

    def encode_text(self, text: str) -> list[int]:
        return encode_text(self.tokenizer, text)

    async def generate(self, prompt_ids: list[int], *, max_tokens: int, temperature: float,
                       top_p: float) -> AsyncIterator[Event]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p if temperature else 1.0,
                                stop_token_ids=self.stop_ids)
        request_id = uuid.uuid4().hex
        sent, output = "", None
        try:
            async for output in self.engine.generate({"prompt_token_ids": prompt_ids}, params, request_id,
                                                     lora_request=self.lora_request):
                text = output.outputs[0].text  # cumulative
                if len(text) > len(sent):
                    yield TextDelta(text[len(sent):])
                    sent = text
        except Exception as error:  # noqa: BLE001 - report to the client
            yield Failed(f"generation failed: {type(error).__name__}: {error}")
            return
        finally:
            if output is None or not output.finished:
                await self.engine.abort(request_id)
        completion = output.outputs[0]
        yield Finished("stop" if completion.finish_reason == "stop" else "length", len(prompt_ids), len(completion.token_ids))

    def close(self) -> None:
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()


def check_vllm_available() -> None:
    """Raise a clear error when the vllm backend cannot run here."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError("--backend vllm needs the vllm package (pip install 'llm-dojo[vllm]'); "
                           "use --backend hf to serve with transformers")
    if not torch.cuda.is_available():
        raise RuntimeError("--backend vllm needs a CUDA GPU and none is visible; use --backend hf")


# --------------------------------------------------------------------------------------------------- request schemas
# Unknown fields are ignored: OpenAI clients send many optional ones (user, seed, logprobs, …).


class TextPart(BaseModel):
    """One text part of a message's content list (images and audio are not supported)."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message of a chat request; "developer" is treated as "system"."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        """The content as one string."""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    """Fields shared by /v1/chat/completions and /v1/completions (OpenAI's defaults: temperature 1, top_p 1)."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=1, description="only one choice per request is supported")
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = None


class ChatCompletionRequest(Sampling):
    """Body of POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


class CompletionRequest(Sampling):
    """Body of POST /v1/completions: a raw prompt, no chat template."""

    prompt: Union[str, list[str]]


# --------------------------------------------------------------------------------------------------- HTTP layer


class APIError(Exception):
    """An error to return in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_body(message: str, type: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class BodySizeLimit:
    """ASGI middleware: reads the whole request body first and answers 413 when it is larger than `max_bytes`."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
            if size <= self.max_bytes:
                chunks.append(message.get("body", b""))
            elif size > 8 * self.max_bytes:  # stop reading an absurd body; the connection will be closed
                break
        if size > self.max_bytes:
            body = json.dumps(error_body(f"request body is {size} bytes or more; the limit is {self.max_bytes}",
                                         code="request_too_large")).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: wait for http.disconnect, as streaming responses do

        await self.app(scope, replay, send)


def create_app(engine, *, api_key: Optional[str] = None, max_body_bytes: int = MAX_BODY_BYTES):
    """The FastAPI app serving `engine` (an HFEngine or VLLMEngine). Run it with uvicorn."""
    # ---- app, errors, auth

    app = FastAPI(title="LLM-Dojo OpenAI-compatible server", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, error: APIError):
        return JSONResponse(error_body(error.message, error.type, error.param, error.code), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            message, param = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}", None
        else:
            param = ".".join(location) or None
            message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body(message, param=param, code=first.get("type")), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return JSONResponse(error_body(f"{request.method} {request.url.path}: {error.detail}", code=code),
                            status_code=error.status_code)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, error: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {type(error).__name__}", type="server_error"), status_code=500)

    async def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    # ---- shared request handling

    def check_model(name: str) -> None:
        if name != engine.model_id:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {engine.model_id!r}",
                           param="model", code="model_not_found")

    def check_common(body: Sampling) -> None:
        check_model(body.model)
        if body.stop:
            raise APIError(400, "stop sequences are not supported; generation ends at the model's end-of-turn "
                                "token or max_tokens", param="stop", code="unsupported_parameter")

    def token_budget(prompt_ids: list[int], requested: Optional[int], default: int, param: str) -> int:
        room = engine.context_window - len(prompt_ids)
        if requested is not None and requested > room:
            raise APIError(400, f"this model's context window is {engine.context_window} tokens; the prompt uses "
                                f"{len(prompt_ids)}, so {param} can be at most {max(room, 0)} (got {requested})",
                           param=param, code="context_length_exceeded")
        if room < 1:
            raise APIError(400, f"the prompt ({len(prompt_ids)} tokens) fills the {engine.context_window}-token "
                                f"context window", param="messages", code="context_length_exceeded")
        return requested if requested is not None else min(default, room)

    def usage(finished: Finished) -> dict[str, int]:
        return {"prompt_tokens": finished.prompt_tokens, "completion_tokens": finished.completion_tokens,
                "total_tokens": finished.prompt_tokens + finished.completion_tokens}

    def sse(data: dict[str, Any]) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    async def collect(events: AsyncIterator[Event]) -> tuple[str, Finished]:
        parts = []
        async for event in events:
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Failed):
                raise APIError(500, event.message, type="server_error")
            else:
                return "".join(parts), event
        raise APIError(500, "generation ended without a result", type="server_error")

    async def stream(events: AsyncIterator[Event], chunk: Any, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: one `data:` line per text delta, then the finish reason, usage, and [DONE]."""
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    yield sse(chunk(text=event.text))
                elif isinstance(event, Failed):
                    yield sse(error_body(event.message, type="server_error"))
                    break
                else:
                    yield sse(chunk(finish_reason=event.finish_reason))
                    if include_usage:
                        yield sse({**chunk(), "choices": [], "usage": usage(event)})
            yield "data: [DONE]\n\n"
        finally:
            await events.aclose()  # a client that went away cancels its row in the batch

    # ---- endpoints

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.model_id, "queued": engine.queued}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models():
        return {"object": "list", "data": [{"id": engine.model_id, "object": "model", "created": 0, "owned_by": "llm-dojo"}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatCompletionRequest):
        check_common(body)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        try:
            prompt_ids = engine.encode_chat(messages)
        except Exception as error:  # noqa: BLE001 - templates raise on conversations they do not accept
            raise APIError(400, f"the chat template rejected these messages: {error}", param="messages") from None
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        max_tokens = token_budget(prompt_ids, requested, DEFAULT_MAX_TOKENS, param)
        events = engine.generate(prompt_ids, max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p)
        response_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            sent_role = False

            def chunk(text: Optional[str] = None, finish_reason: Optional[str] = None) -> dict[str, Any]:
                nonlocal sent_role
                delta: dict[str, Any] = {}
                if text is not None or finish_reason is None:
                    if not sent_role:
                        delta["role"], sent_role = "assistant", True
                    if text is not None:
                        delta["content"] = text
                return {"id": response_id, "object": "chat.completion.chunk", "created": created,
                        "model": engine.model_id,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream(events, chunk, include_usage), media_type="text/event-stream")
        text, finished = await collect(events)
        return {"id": response_id, "object": "chat.completion", "created": created, "model": engine.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finished.finish_reason}],
                "usage": usage(finished)}

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest):
        check_common(body)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise APIError(400, "send one prompt per request (a string, or a list of one string)", param="prompt")
        prompt_ids = engine.encode_text(prompts[0])
        if not prompt_ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        max_tokens = token_budget(prompt_ids, body.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, "max_tokens")
        events = engine.generate(prompt_ids, max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p)
        response_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def choice(text: str, finish_reason: Optional[str]) -> dict[str, Any]:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

        if body.stream:
            def chunk(text: Optional[str] = None, finish_reason: Optional[str] = None) -> dict[str, Any]:
                return {"id": response_id, "object": "text_completion", "created": created, "model": engine.model_id,
                        "choices": [choice(text or "", finish_reason)]}

            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream(events, chunk, include_usage), media_type="text/event-stream")
        text, finished = await collect(events)
        return {"id": response_id, "object": "text_completion", "created": created, "model": engine.model_id,
                "choices": [choice(text, finished.finish_reason)], "usage": usage(finished)}

    return app


@contextlib.contextmanager
def serve_in_background(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Run `app` with uvicorn on a free port in a background thread; yields its base URL (tests, notebooks)."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="dojo-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


# --------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dojo serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* requests")
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--max-batch-size", type=int, default=8, help="most requests generated together")
    parser.add_argument("--served-model-name", help="the model id clients send (default: adapter or model folder name)")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    return parser


def served_name(args: argparse.Namespace) -> str:
    """The id clients use: --served-model-name, else the adapter's or model's folder name."""
    if args.served_model_name:
        return args.served_model_name
    source = args.adapter or args.model
    return Path(source.rstrip("/")).name or source


def main(argv: list[str]) -> int:
    """Entry point of `dojo serve`."""
    import uvicorn

    args = build_parser().parse_args(argv)
    if args.model is None and args.adapter is None:
        raise SystemExit("dojo serve: give --model, --adapter, or both")
    model_id = served_name(args)
    if args.backend == "vllm":
        try:
            check_vllm_available()
        except RuntimeError as error:
            print(f"dojo serve: error: {error}", file=sys.stderr)
            return 2
        from llm_dojo.models.embedded import resolve_model_path
        from llm_dojo.models.loading import load_tokenizer, read_adapter_base

        base = resolve_model_path(args.model or read_adapter_base(args.adapter))
        tokenizer = load_tokenizer(args.adapter if args.adapter and (Path(args.adapter) / "tokenizer_config.json").is_file() else base)
        engine = VLLMEngine(base, args.adapter, tokenizer, model_id, max_batch_size=args.max_batch_size,
                            dtype=args.dtype, load_in_4bit=args.load_in_4bit, trust_remote_code=args.trust_remote_code)
    else:
        model, tokenizer = load_from_args(args)
        engine = HFEngine(model, tokenizer, model_id, max_batch_size=args.max_batch_size)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        logger.warning("serving on %s without --api-key: anyone who can reach this address can use the model", args.host)
    logger.info("serving %r on http://%s:%d/v1", model_id, args.host, args.port)
    try:
        uvicorn.run(create_app(engine, api_key=args.api_key, max_body_bytes=args.max_body_bytes),
                    host=args.host, port=args.port, log_level="info")
    finally:
        engine.close()
    return 0
