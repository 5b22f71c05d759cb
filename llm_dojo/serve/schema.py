"""What `dojo serve` accepts and how it refuses: pydantic models of OpenAI's request bodies, and OpenAI's error shape.

Every error leaves the server as {"error": {"message", "type", "param", "code"}}, the object OpenAI clients parse.
OpenAI parameters the server does not implement are listed in UNSUPPORTED: a request that sets one to anything but
its "off" value gets a 400 naming it, instead of an answer that silently ignored it.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_STRINGS = 4  # OpenAI's limit


# --------------------------------------------------------------------------------------------------- request schemas


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
    """`stream_options` of a streamed request: whether a last chunk carries the usage."""

    include_usage: bool = False


class Sampling(BaseModel):
    """Fields shared by /v1/chat/completions and /v1/completions (OpenAI's defaults: temperature 1, top_p 1).

    Fields not declared here land in `model_extra`: check_supported refuses the ones listed in UNSUPPORTED and
    ignores the rest (`user`, `metadata`, `store`, … change nothing about the answer)."""

    model_config = ConfigDict(extra="allow")
    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: Optional[int] = Field(None, ge=-(2**63), lt=2**64, description="reproducible sampling")
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop):
        strings = [stop] if isinstance(stop, str) else (stop or [])
        if len(strings) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(strings)}")
        if any(s == "" for s in strings):
            raise ValueError("a stop string must not be empty")
        return stop

    def stop_strings(self) -> tuple[str, ...]:
        """`stop` as a tuple (empty when not given)."""
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatCompletionRequest(Sampling):
    """Body of POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)


class CompletionRequest(Sampling):
    """Body of POST /v1/completions: a raw prompt (text or token ids), no chat template."""

    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[int] = Field(None, ge=0, description="0 only with echo: score the prompt, generate nothing")
    logprobs: Optional[int] = Field(None, ge=0, le=5)
    echo: bool = False


# --------------------------------------------------------------------------------------------------- unsupported


# OpenAI parameters (and the common vLLM sampling extensions) that change the answer and that this server does not
# implement, with the values that mean "off": clients often send those explicitly, so they (and null) are accepted.
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "best_of": (1,),
    "suffix": ("",),
    "echo": (False,),  # on /v1/chat/completions (it is implemented on /v1/completions)
    "logit_bias": ({},),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "web_search_options": (),
    "reasoning_effort": (),
    "top_k": (0, -1),
    "min_p": (0,),
    "repetition_penalty": (1,),
}


def check_supported(body: Sampling) -> None:
    """Raise a 400 `unsupported_parameter` naming the first field in UNSUPPORTED that asks for something."""
    for name, value in (body.model_extra or {}).items():
        if name in UNSUPPORTED and value is not None and value not in UNSUPPORTED[name]:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise APIError(400, f"{name!r} is not supported by dojo serve (got {shown}); leave it out",
                           param=name, code="unsupported_parameter")


# --------------------------------------------------------------------------------------------------- errors


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
