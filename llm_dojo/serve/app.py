"""The HTTP side of `dojo serve`: a FastAPI app that speaks OpenAI's API in front of any engine.

An engine (HFEngine, VLLMEngine, or a scripted one in tests) has `model_id`, `context_window`, `queued`,
`encode_chat(messages)`, `encode_text(text)` and `generate(prompt_ids, ...)`, an async iterator of engine events.
`create_app` wires the endpoints; each endpoint body is a plain function below it, then the streaming helpers, the
error handlers, the body-size middleware and `serve_in_background` (tests, notebooks).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_dojo.data.records import check_messages
from llm_dojo.data.sources import DataError
from llm_dojo.serve.engines import Event, Failed, Finished, TextDelta
from llm_dojo.serve.schema import APIError, ChatCompletionRequest, CompletionRequest, Sampling, error_body

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # 1 MiB
DEFAULT_MAX_TOKENS = 512  # when a chat request does not say (capped by what is left of the context window)
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

Chunk = Callable[..., dict[str, Any]]  # chunk(text=None, finish_reason=None) -> one streamed JSON object


def create_app(engine, *, api_key: Optional[str] = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app serving `engine` (an HFEngine or VLLMEngine). Run it with uvicorn."""
    app = FastAPI(title="LLM-Dojo OpenAI-compatible server", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    add_error_handlers(app)
    authorized = [Depends(api_key_check(api_key))]

    @app.get("/health")  # no key: health probes carry no credentials
    async def health():
        return {"status": "ok", "model": engine.model_id, "queued": engine.queued}

    @app.get("/v1/models", dependencies=authorized)
    async def models():
        return {"object": "list",
                "data": [{"id": engine.model_id, "object": "model", "created": 0, "owned_by": "llm-dojo"}]}

    @app.post("/v1/chat/completions", dependencies=authorized)
    async def chat(body: ChatCompletionRequest):
        return await chat_completion(engine, body)

    @app.post("/v1/completions", dependencies=authorized)
    async def completions(body: CompletionRequest):
        return await text_completion(engine, body)

    return app


# --------------------------------------------------------------------------------------------------- auth


def api_key_check(api_key: Optional[str]) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that raises 401 unless the request carries `Authorization: Bearer <api_key>`."""

    async def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken must not tell an attacker how many leading characters were right
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    return authorize


# --------------------------------------------------------------------------------------------------- request checks


def check_sampling(engine, body: Sampling) -> None:
    """Refuse an unknown model, and stop sequences (generation ends at the end-of-turn token or max_tokens)."""
    if body.model != engine.model_id:
        raise APIError(404, f"the model {body.model!r} does not exist; this server serves {engine.model_id!r}",
                       param="model", code="model_not_found")
    if body.stop:
        raise APIError(400, "stop sequences are not supported; generation ends at the model's end-of-turn "
                            "token or max_tokens", param="stop", code="unsupported_parameter")


def chat_messages(body: ChatCompletionRequest) -> list[dict[str, str]]:
    """The request's messages as checked {role, content} dicts: "developer" becomes "system", text parts are joined."""
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    try:
        # the same validator as training data, so a conversation the server accepts is one dojo could train on
        return check_messages(messages, "request", "messages")
    except DataError as error:
        raise APIError(400, str(error), param="messages") from None


def token_budget(engine, prompt_ids: list[int], requested: Optional[int], default: int, param: str) -> int:
    """max_tokens for this request: the requested number if it fits the context window, else a 400."""
    room = engine.context_window - len(prompt_ids)
    if requested is not None and requested > room:
        raise APIError(400, f"this model's context window is {engine.context_window} tokens; the prompt uses "
                            f"{len(prompt_ids)}, so {param} can be at most {max(room, 0)} (got {requested})",
                       param=param, code="context_length_exceeded")
    if room < 1:
        raise APIError(400, f"the prompt ({len(prompt_ids)} tokens) fills the {engine.context_window}-token "
                            f"context window", param="messages", code="context_length_exceeded")
    return requested if requested is not None else min(default, room)


# --------------------------------------------------------------------------------------------------- endpoints


async def chat_completion(engine, body: ChatCompletionRequest):
    """POST /v1/chat/completions: one assistant turn, whole or streamed."""
    check_sampling(engine, body)
    messages = chat_messages(body)
    try:
        prompt_ids = engine.encode_chat(messages)
    except Exception as error:  # noqa: BLE001 - templates raise on conversations they do not accept
        raise APIError(400, f"the chat template rejected these messages: {error}", param="messages") from None
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = token_budget(engine, prompt_ids, requested, DEFAULT_MAX_TOKENS, param)
    events = engine.generate(prompt_ids, max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p)
    response_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        chunk = chat_chunks(response_id, created, engine.model_id)
        return event_stream(events, chunk, body)
    text, finished = await collect(events)
    return {"id": response_id, "object": "chat.completion", "created": created, "model": engine.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finished.finish_reason}],
            "usage": usage(finished)}


def chat_chunks(response_id: str, created: int, model_id: str) -> Chunk:
    """Builds the chat.completion.chunk objects of one streamed answer; the first one carries the role."""
    sent_role = False

    def chunk(text: Optional[str] = None, finish_reason: Optional[str] = None) -> dict[str, Any]:
        nonlocal sent_role
        delta: dict[str, Any] = {}
        if text is not None or finish_reason is None:
            if not sent_role:
                delta["role"], sent_role = "assistant", True
            if text is not None:
                delta["content"] = text
        return {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    return chunk


async def text_completion(engine, body: CompletionRequest):
    """POST /v1/completions: continue a raw prompt (no chat template), whole or streamed."""
    check_sampling(engine, body)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise APIError(400, "send one prompt per request (a string, or a list of one string)", param="prompt")
    prompt_ids = engine.encode_text(prompts[0])
    if not prompt_ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    max_tokens = token_budget(engine, prompt_ids, body.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, "max_tokens")
    events = engine.generate(prompt_ids, max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p)
    response_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    # the same object whole or streamed: OpenAI's streamed completions are "text_completion" chunks too
    def completion(text: Optional[str] = None, finish_reason: Optional[str] = None, **extra: Any) -> dict[str, Any]:
        return {"id": response_id, "object": "text_completion", "created": created, "model": engine.model_id,
                "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}],
                **extra}

    if body.stream:
        return event_stream(events, completion, body)
    text, finished = await collect(events)
    return completion(text, finished.finish_reason, usage=usage(finished))


# --------------------------------------------------------------------------------------------------- streaming


def usage(finished: Finished) -> dict[str, int]:
    """OpenAI's usage object for a finished request."""
    return {"prompt_tokens": finished.prompt_tokens, "completion_tokens": finished.completion_tokens,
            "total_tokens": finished.prompt_tokens + finished.completion_tokens}


def sse(data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def collect(events: AsyncIterator[Event]) -> tuple[str, Finished]:
    """The whole text of a non-streamed answer, and how it finished (a failure becomes a 500)."""
    parts = []
    async for event in events:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, Failed):
            raise APIError(500, event.message, type="server_error")
        else:
            return "".join(parts), event
    raise APIError(500, "generation ended without a result", type="server_error")


def event_stream(events: AsyncIterator[Event], chunk: Chunk, body: Sampling) -> StreamingResponse:
    """The streamed response for `events`, with a usage chunk when the request's stream_options ask for one."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(stream(events, chunk, include_usage), media_type="text/event-stream")


async def stream(events: AsyncIterator[Event], chunk: Chunk, include_usage: bool) -> AsyncIterator[str]:
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


# --------------------------------------------------------------------------------------------------- errors


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error in OpenAI's shape, so clients raise their usual exceptions."""
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_crash)


async def on_api_error(request: Request, error: APIError) -> JSONResponse:
    """An APIError raised by a check or an endpoint."""
    return JSONResponse(error_body(error.message, error.type, error.param, error.code), status_code=error.status)


async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """Invalid JSON or a field pydantic refused: 400, naming the first bad field."""
    first = error.errors()[0] if error.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        message, param = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}", None
    else:
        param = ".".join(location) or None
        message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
    return JSONResponse(error_body(message, param=param, code=first.get("type")), status_code=400)


async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Unknown routes and methods."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
    return JSONResponse(error_body(f"{request.method} {request.url.path}: {error.detail}", code=code),
                        status_code=error.status_code)


async def on_crash(request: Request, error: Exception) -> JSONResponse:
    """A bug: log the traceback, tell the client only the exception's type."""
    logger.exception("unhandled error on %s", request.url.path)
    return JSONResponse(error_body(f"internal error: {type(error).__name__}", type="server_error"), status_code=500)


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


# --------------------------------------------------------------------------------------------------- running it


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
