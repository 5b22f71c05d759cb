"""The two generating endpoints of `dojo serve`: request checks, GenerationParams, and the answer whole or streamed.

  chat_completion  POST /v1/chat/completions: one assistant turn; `logprobs`/`top_logprobs` in chat's shape
  text_completion  POST /v1/completions: a raw prompt (text or token ids); `logprobs: N` in the legacy shape, and
                   `echo` (the prompt before the completion, scored: what lm-evaluation-harness's loglikelihood sends)
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Optional

from fastapi.responses import StreamingResponse

from llm_dojo.data.records import check_messages
from llm_dojo.data.sources import DataError
from llm_dojo.serve.engines import Event, Failed, Finished, GenerationParams, Prompt, TextDelta
from llm_dojo.serve.logprobs import TokenLogprob, chat_logprobs, joined, legacy_logprobs
from llm_dojo.serve.schema import (APIError, ChatCompletionRequest, CompletionRequest, Sampling, check_supported,
                                   error_body)

DEFAULT_MAX_TOKENS = 512  # when a chat request does not say (capped by what is left of the context window)
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

Chunk = Callable[..., dict[str, Any]]  # chunk(text, logprobs, finish_reason, echo) -> one response object or chunk


# --------------------------------------------------------------------------------------------------- request checks


def check_request(engine, body: Sampling) -> None:
    """Refuse an unknown model and the OpenAI parameters this server does not implement."""
    if body.model != engine.model_id:
        raise APIError(404, f"the model {body.model!r} does not exist; this server serves {engine.model_id!r}",
                       param="model", code="model_not_found")
    check_supported(body)


def chat_messages(body: ChatCompletionRequest) -> list[dict[str, str]]:
    """The request's messages as checked {role, content} dicts: "developer" becomes "system", text parts are joined."""
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    try:
        # the same validator as training data, so a conversation the server accepts is one dojo could train on
        return check_messages(messages, "request", "messages")
    except DataError as error:
        raise APIError(400, str(error), param="messages") from None


def completion_prompt(engine, prompt) -> list[int]:
    """The token ids of a completions prompt: a string is tokenized (no chat template), token ids are used as sent."""
    single = isinstance(prompt, str) or (bool(prompt) and isinstance(prompt[0], int))
    prompts = [prompt] if single else prompt
    if len(prompts) != 1:
        raise APIError(400, "send one prompt per request: a string, a list of token ids, or a list of one of these",
                       param="prompt")
    ids = engine.encode_text(prompts[0]) if isinstance(prompts[0], str) else list(prompts[0])
    if not ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    outside = [token_id for token_id in ids if not 0 <= token_id < engine.vocab_size]
    if outside:
        raise APIError(400, f"token id {outside[0]} is outside the vocabulary (0..{engine.vocab_size - 1})",
                       param="prompt")
    return ids


def token_budget(engine, prompt_ids: list[int], requested: Optional[int], default: int, param: str,
                 prompt_param: str) -> int:
    """max_tokens for this request: the requested number if it fits the context window, else a 400."""
    room = engine.context_window - len(prompt_ids)
    if room < (0 if requested == 0 else 1):
        raise APIError(400, f"the prompt ({len(prompt_ids)} tokens) fills the {engine.context_window}-token "
                            f"context window", param=prompt_param, code="context_length_exceeded")
    if requested is not None and requested > room:
        raise APIError(400, f"this model's context window is {engine.context_window} tokens; the prompt uses "
                            f"{len(prompt_ids)}, so {param} can be at most {room} (got {requested})",
                       param=param, code="context_length_exceeded")
    return requested if requested is not None else min(default, room)


# --------------------------------------------------------------------------------------------------- endpoints


async def chat_completion(engine, body: ChatCompletionRequest):
    """POST /v1/chat/completions: one assistant turn, whole or streamed."""
    check_request(engine, body)
    if body.top_logprobs and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    messages = chat_messages(body)
    try:
        prompt_ids = engine.encode_chat(messages)
    except Exception as error:  # noqa: BLE001 - templates raise on conversations they do not accept
        raise APIError(400, f"the chat template rejected these messages: {error}", param="messages") from None
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    params = GenerationParams(token_budget(engine, prompt_ids, requested, DEFAULT_MAX_TOKENS, param, "messages"),
                              body.temperature, body.top_p, body.seed, body.stop_strings(),
                              logprobs=(body.top_logprobs or 0) if body.logprobs else None)
    events = engine.generate(prompt_ids, params)
    response_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        return event_stream(events, chat_chunks(response_id, created, engine.model_id, bool(body.logprobs)), body)
    answer = await collect(events)
    return {"id": response_id, "object": "chat.completion", "created": created, "model": engine.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "logprobs": chat_logprobs(answer.logprobs) if body.logprobs else None,
                         "finish_reason": answer.finished.finish_reason}],
            "usage": usage(answer.finished)}


def chat_chunks(response_id: str, created: int, model_id: str, with_logprobs: bool) -> Chunk:
    """Builds the chat.completion.chunk objects of one streamed answer; the first one carries the role."""
    sent_role = False

    def chunk(text: Optional[str] = None, logprobs: Optional[list[TokenLogprob]] = None,
              finish_reason: Optional[str] = None, echo: bool = False) -> dict[str, Any]:
        nonlocal sent_role
        delta: dict[str, Any] = {}
        if text is not None or finish_reason is None:
            if not sent_role:
                delta["role"], sent_role = "assistant", True
            if text is not None:
                delta["content"] = text
        choice_logprobs = chat_logprobs(logprobs or []) if with_logprobs and text is not None else None
        return {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                "choices": [{"index": 0, "delta": delta, "logprobs": choice_logprobs, "finish_reason": finish_reason}]}

    return chunk


async def text_completion(engine, body: CompletionRequest):
    """POST /v1/completions: continue a raw prompt (no chat template), whole or streamed."""
    check_request(engine, body)
    prompt_ids = completion_prompt(engine, body.prompt)
    if body.max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens must be at least 1 (0 is accepted with echo: true, to score the prompt)",
                       param="max_tokens")
    max_tokens = token_budget(engine, prompt_ids, body.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, "max_tokens",
                              "prompt")
    params = GenerationParams(max_tokens, body.temperature, body.top_p, body.seed, body.stop_strings(),
                              logprobs=body.logprobs, echo=body.echo)
    events = engine.generate(prompt_ids, params)
    completion = completion_chunks(f"cmpl-{uuid.uuid4().hex}", int(time.time()), engine.model_id,
                                   body.logprobs is not None)
    if body.stream:
        return event_stream(events, completion, body)
    answer = await collect(events)
    prompt = answer.prompt or Prompt("")  # the echoed prompt comes before the completion
    whole = completion(prompt.text + answer.text, finish_reason=answer.finished.finish_reason,
                       usage=usage(answer.finished))
    if body.logprobs is not None:
        whole["choices"][0]["logprobs"] = joined(legacy_logprobs(prompt.logprobs),
                                                 legacy_logprobs(answer.logprobs, shift=len(prompt.text)))
    return whole


def completion_chunks(response_id: str, created: int, model_id: str, with_logprobs: bool) -> Chunk:
    """Builds text_completion objects (the same whole or streamed); an echoed prompt shifts later text offsets."""
    shift = 0

    def chunk(text: Optional[str] = None, logprobs: Optional[list[TokenLogprob]] = None,
              finish_reason: Optional[str] = None, echo: bool = False, **extra: Any) -> dict[str, Any]:
        nonlocal shift
        choice_logprobs = None
        if with_logprobs and text is not None:
            choice_logprobs = legacy_logprobs(logprobs or [], 0 if echo else shift)
        if echo:
            shift = len(text or "")
        choice = {"index": 0, "text": text or "", "logprobs": choice_logprobs, "finish_reason": finish_reason}
        return {"id": response_id, "object": "text_completion", "created": created, "model": model_id,
                "choices": [choice], **extra}

    return chunk


# --------------------------------------------------------------------------------------------------- whole or streamed


@dataclass
class Answer:
    """A whole (non-streamed) answer: its text and token log-probs, how it finished, and the echoed prompt if any."""

    text: str
    logprobs: list[TokenLogprob]
    finished: Finished
    prompt: Optional[Prompt] = None


async def collect(events: AsyncIterator[Event]) -> Answer:
    """The whole answer of a non-streamed request (a failure becomes a 500)."""
    parts, logprobs, prompt = [], [], None
    async for event in events:
        if isinstance(event, Prompt):
            prompt = event
        elif isinstance(event, TextDelta):
            logprobs += event.logprobs  # offsets count from the start of the answer, so they need no change
            parts.append(event.text)
        elif isinstance(event, Failed):
            raise APIError(500, event.message, type="server_error")
        else:
            return Answer("".join(parts), logprobs, event, prompt)
    raise APIError(500, "generation ended without a result", type="server_error")


def usage(finished: Finished) -> dict[str, int]:
    """OpenAI's usage object for a finished request."""
    return {"prompt_tokens": finished.prompt_tokens, "completion_tokens": finished.completion_tokens,
            "total_tokens": finished.prompt_tokens + finished.completion_tokens}


def sse(data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def event_stream(events: AsyncIterator[Event], chunk: Chunk, body: Sampling) -> StreamingResponse:
    """The streamed response for `events`, with a usage chunk when the request's stream_options ask for one."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(stream(events, chunk, include_usage), media_type="text/event-stream")


async def stream(events: AsyncIterator[Event], chunk: Chunk, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: the echoed prompt, one `data:` line per text delta, the finish reason, usage, [DONE]."""
    try:
        async for event in events:
            if isinstance(event, (Prompt, TextDelta)):
                yield sse(chunk(text=event.text, logprobs=event.logprobs, echo=isinstance(event, Prompt)))
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
