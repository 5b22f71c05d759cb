"""The HTTP side of `dojo serve`: a FastAPI app that speaks OpenAI's API in front of any engine.

An engine (HFEngine, VLLMEngine, or a scripted one in tests) has `model_id`, `context_window`, `vocab_size`, `queued`,
`encode_chat(messages)`, `encode_text(text)` and `generate(prompt_ids, params)`, an async iterator of engine events.
`create_app` wires the endpoints (their bodies live in completions.py); below it: the API-key check, the error
handlers, the body-size middleware and `serve_in_background` (tests, notebooks).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import threading
import time
from typing import Awaitable, Callable, Iterator, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_dojo.serve.completions import chat_completion, text_completion
from llm_dojo.serve.schema import APIError, ChatCompletionRequest, CompletionRequest, error_body

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # 1 MiB


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
