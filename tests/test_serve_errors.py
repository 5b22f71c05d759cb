"""The HTTP layer of `dojo serve` with a scripted engine (no model): error shapes, auth, limits, SSE framing."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from llm_dojo.serve.app import create_app, serve_in_background
from llm_dojo.serve.engines import Finished, Prompt, TextDelta
from llm_dojo.serve.logprobs import Candidate, TokenLogprob

API_KEY = "sekrit"


class ScriptedEngine:
    """Answers every request with the same words; one "token" per character of the prompt (token id = code point).

    With logprobs each word is one token of log-prob -1 (alternative "?" at -2); an echoed prompt is its characters,
    the first unscored, the others at -0.5. Every request's GenerationParams is kept in `seen`."""

    model_id = "scripted"
    context_window = 64
    vocab_size = 1000
    queued = 0

    def __init__(self):
        self.seen = []

    def encode_chat(self, messages):
        return list(range(sum(len(m["content"]) for m in messages)))

    def encode_text(self, text):
        return [ord(char) for char in text]

    async def generate(self, prompt_ids, params):
        self.seen.append(params)
        scored = params.logprobs is not None
        if params.echo:
            text = "".join(chr(i) for i in prompt_ids)
            yield Prompt(text, [TokenLogprob(c, list(c.encode()), None if i == 0 else -0.5, None if i == 0 else [], i)
                                for i, c in enumerate(text)] if scored else [])
        words, offset = ["Hello", " there", "!"][:params.max_tokens], 0
        for word in words:
            yield TextDelta(word, [TokenLogprob(word, list(word.encode()), -1.0, [Candidate("?", [63], -2.0)], offset)]
                            if scored else [])
            offset += len(word)
        yield Finished("stop" if len(words) == 3 else "length", len(prompt_ids), len(words) + (len(words) == 3))


@pytest.fixture(scope="module")
def engine():
    return ScriptedEngine()


@pytest.fixture(scope="module")
def url(engine):
    with serve_in_background(create_app(engine, api_key=API_KEY, max_body_bytes=1 << 20)) as base:
        yield base


def call(url: str, path: str, body=None, *, raw: bytes | None = None, key: str | None = API_KEY, method=None):
    """(status, parsed JSON or text) for one request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"))
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def chat_body(**overrides):
    return {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], **overrides}


def assert_openai_error(payload, status, expected_status):
    assert status == expected_status, payload
    assert set(payload) == {"error"}
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["message"]


BAD_REQUESTS = [
    ("malformed json", "/v1/chat/completions", b'{"model": "scripted", "messages": [', 400),
    ("not an object", "/v1/chat/completions", b"[1, 2]", 400),
    ("missing messages", "/v1/chat/completions", {"model": "scripted"}, 400),
    ("missing model", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 400),
    ("messages not a list", "/v1/chat/completions", chat_body(messages="hi"), 400),
    ("empty messages", "/v1/chat/completions", chat_body(messages=[]), 400),
    ("bad role", "/v1/chat/completions", chat_body(messages=[{"role": "wizard", "content": "hi"}]), 400),
    ("content not text", "/v1/chat/completions", chat_body(messages=[{"role": "user", "content": 5}]), 400),
    ("empty content", "/v1/chat/completions", chat_body(messages=[{"role": "user", "content": "  "}]), 400),
    ("max_tokens not a number", "/v1/chat/completions", chat_body(max_tokens="lots"), 400),
    ("max_tokens zero", "/v1/chat/completions", chat_body(max_tokens=0), 400),
    ("temperature too high", "/v1/chat/completions", chat_body(temperature=7), 400),
    ("n above one", "/v1/chat/completions", chat_body(n=3), 400),
    ("five stop strings", "/v1/chat/completions", chat_body(stop=["a", "b", "c", "d", "e"]), 400),
    ("empty stop string", "/v1/chat/completions", chat_body(stop=""), 400),
    ("top_logprobs above 20", "/v1/chat/completions", chat_body(logprobs=True, top_logprobs=21), 400),
    ("top_logprobs without logprobs", "/v1/chat/completions", chat_body(top_logprobs=2), 400),
    ("max_tokens beyond context", "/v1/chat/completions", chat_body(max_tokens=100_000), 400),
    ("unknown model", "/v1/chat/completions", chat_body(model="gpt-9"), 404),
    ("completion without prompt", "/v1/completions", {"model": "scripted"}, 400),
    ("completion with two prompts", "/v1/completions", {"model": "scripted", "prompt": ["a", "b"]}, 400),
    ("completion with two token lists", "/v1/completions", {"model": "scripted", "prompt": [[1], [2]]}, 400),
    ("token id outside the vocabulary", "/v1/completions", {"model": "scripted", "prompt": [5, 1000]}, 400),
    ("empty token list", "/v1/completions", {"model": "scripted", "prompt": [[]]}, 400),
    ("max_tokens zero without echo", "/v1/completions", {"model": "scripted", "prompt": "a", "max_tokens": 0}, 400),
    ("completion logprobs above 5", "/v1/completions", {"model": "scripted", "prompt": "a", "logprobs": 6}, 400),
    ("unknown route", "/v1/embeddings", {"model": "scripted", "input": "hi"}, 404),
]


@pytest.mark.parametrize("name, path, body, expected", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_openai_error_and_server_keeps_serving(url, name, path, body, expected):
    raw = body if isinstance(body, bytes) else None
    status, payload = call(url, path, None if raw else body, raw=raw)
    assert_openai_error(payload, status, expected)
    assert call(url, "/health")[0] == 200


def test_context_window_error_names_the_limit(url):
    status, payload = call(url, "/v1/chat/completions", chat_body(max_tokens=100_000))
    assert payload["error"]["code"] == "context_length_exceeded"
    assert payload["error"]["param"] == "max_tokens"
    assert "64" in payload["error"]["message"]


def test_validation_error_names_the_field(url):
    status, payload = call(url, "/v1/chat/completions", chat_body(max_tokens="lots"))
    assert payload["error"]["param"] == "max_tokens"


def test_empty_message_is_refused_by_the_shared_validator_naming_its_index(url):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": ""}]}]
    status, payload = call(url, "/v1/chat/completions", chat_body(messages=messages))
    assert_openai_error(payload, status, 400)
    assert payload["error"]["param"] == "messages"
    assert payload["error"]["message"] == "request: field 'messages[1].content' is empty"


def test_developer_role_and_text_parts_are_accepted(url):
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]}]
    status, payload = call(url, "/v1/chat/completions", chat_body(messages=messages))
    assert status == 200, payload
    assert payload["usage"]["prompt_tokens"] == len("Be brief.") + len("hi")


def test_body_over_limit_gets_413(url):
    huge = chat_body(messages=[{"role": "user", "content": "x" * (1 << 20)}])
    status, payload = call(url, "/v1/chat/completions", huge)
    assert_openai_error(payload, status, 413)
    assert call(url, "/health")[0] == 200


@pytest.mark.parametrize("key", [None, "wrong"])
def test_missing_or_wrong_api_key_gets_401(url, key):
    status, payload = call(url, "/v1/models", key=key)
    assert_openai_error(payload, status, 401)
    assert payload["error"]["code"] == "invalid_api_key"


def test_health_needs_no_key(url):
    status, payload = call(url, "/health", key=None)
    assert status == 200 and payload["status"] == "ok"


def test_models_lists_the_served_model(url):
    status, payload = call(url, "/v1/models")
    assert status == 200
    assert [model["id"] for model in payload["data"]] == ["scripted"]


def test_non_streamed_chat_has_message_and_usage(url):
    status, payload = call(url, "/v1/chat/completions", chat_body())
    assert status == 200
    assert payload["choices"][0]["message"] == {"role": "assistant", "content": "Hello there!"}
    assert payload["choices"][0]["finish_reason"] == "stop"
    assert payload["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}


def test_streamed_chat_is_sse_ending_with_done(url):
    body = chat_body(stream=True, max_tokens=2, stream_options={"include_usage": True})
    status, text = call(url, "/v1/chat/completions", body)
    assert status == 200
    events = [line[len("data: "):] for line in text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hello"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hello there"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


def test_completions_returns_text_choice(url):
    status, payload = call(url, "/v1/completions", {"model": "scripted", "prompt": "Once upon", "max_tokens": 1})
    assert status == 200
    assert payload["choices"][0]["text"] == "Hello"
    assert payload["choices"][0]["finish_reason"] == "length"
    assert payload["usage"]["prompt_tokens"] == len("Once upon")


def test_vllm_backend_without_vllm_is_a_clear_error(capsys):
    import importlib.util

    from llm_dojo.serve import cli

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")

    code = cli.main(["--model", "whatever", "--backend", "vllm"])
    assert code == 2
    assert "vllm" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- OpenAI parameters

UNSUPPORTED = [
    ("best_of", 2, "/v1/completions"),
    ("suffix", " the end", "/v1/completions"),
    ("n", 2, "/v1/completions"),
    ("n", 3, "/v1/chat/completions"),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}], "/v1/chat/completions"),
    ("tool_choice", "auto", "/v1/chat/completions"),
    ("functions", [{"name": "f"}], "/v1/chat/completions"),
    ("response_format", {"type": "json_object"}, "/v1/chat/completions"),
    ("presence_penalty", 0.5, "/v1/chat/completions"),
    ("frequency_penalty", -1, "/v1/completions"),
    ("logit_bias", {"50256": -100}, "/v1/chat/completions"),
    ("echo", True, "/v1/chat/completions"),
    ("top_k", 40, "/v1/chat/completions"),
    ("repetition_penalty", 1.2, "/v1/completions"),
    ("reasoning_effort", "high", "/v1/chat/completions"),
]


def body_for(path: str, **fields):
    if path == "/v1/completions":
        return {"model": "scripted", "prompt": "hi", **fields}
    return chat_body(**fields)


@pytest.mark.parametrize("param, value, path", UNSUPPORTED, ids=[f"{p}={v!r}"[:40] for p, v, _ in UNSUPPORTED])
def test_unsupported_parameter_gets_400_naming_it(url, param, value, path):
    status, payload = call(url, path, body_for(path, **{param: value}))
    assert_openai_error(payload, status, 400)
    assert payload["error"]["code"] == "unsupported_parameter"
    assert payload["error"]["param"] == param
    assert f"'{param}' is not supported" in payload["error"]["message"]


HARMLESS = {"user": "u-1", "metadata": {"run": "a"}, "store": False, "parallel_tool_calls": None,
            "service_tier": "auto", "stream_options": None, "n": 1, "best_of": 1, "presence_penalty": 0,
            "frequency_penalty": 0.0, "logit_bias": {}, "response_format": {"type": "text"}, "tool_choice": "none",
            "tools": None, "suffix": None, "top_k": -1, "some_future_field": 1}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_harmless_fields_and_off_values_are_accepted(url, path):
    status, payload = call(url, path, body_for(path, **HARMLESS))
    assert status == 200, payload


def test_request_settings_reach_the_engine_as_generation_params(url, engine):
    call(url, "/v1/chat/completions", chat_body(seed=7, stop="\n", logprobs=True, top_logprobs=3, temperature=0.5))
    call(url, "/v1/chat/completions", chat_body(logprobs=True, stop=["a", "b"]))
    call(url, "/v1/completions", {"model": "scripted", "prompt": "hi", "logprobs": 2, "echo": True, "max_tokens": 0})
    chat, chat_default_top, completion = engine.seen[-3:]
    assert (chat.seed, chat.stop, chat.logprobs, chat.temperature, chat.echo) == (7, ("\n",), 3, 0.5, False)
    assert (chat_default_top.seed, chat_default_top.stop, chat_default_top.logprobs) == (None, ("a", "b"), 0)
    assert (completion.max_tokens, completion.logprobs, completion.echo) == (0, 2, True)


@pytest.mark.parametrize("prompt", [[72, 105], [[72, 105]], ["Hi"]])
def test_token_id_prompts_are_used_as_sent(url, engine, prompt):
    status, payload = call(url, "/v1/completions", {"model": "scripted", "prompt": prompt, "max_tokens": 1})
    assert status == 200, payload
    assert payload["usage"]["prompt_tokens"] == 2


def test_completion_echo_with_logprobs_puts_the_prompt_first(url):
    body = {"model": "scripted", "prompt": "Hi!", "max_tokens": 2, "logprobs": 1, "echo": True}
    status, payload = call(url, "/v1/completions", body)
    assert status == 200, payload
    choice = payload["choices"][0]
    assert choice["text"] == "Hi!Hello there"
    assert choice["logprobs"] == {
        "tokens": ["H", "i", "!", "Hello", " there"],
        "token_logprobs": [None, -0.5, -0.5, -1.0, -1.0],
        "top_logprobs": [None, {"i": -0.5}, {"!": -0.5}, {"?": -2.0, "Hello": -1.0}, {"?": -2.0, " there": -1.0}],
        "text_offset": [0, 1, 2, 3, 8],
    }
    assert payload["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_streamed_completion_echo_equals_the_whole_one(url):
    body = {"model": "scripted", "prompt": "Hi!", "max_tokens": 2, "logprobs": 1, "echo": True}
    whole = call(url, "/v1/completions", body)[1]["choices"][0]
    status, text = call(url, "/v1/completions", {**body, "stream": True})
    chunks = [json.loads(event[len("data: "):]) for event in text.split("\n\n") if event and "[DONE]" not in event]
    choices = [chunk["choices"][0] for chunk in chunks]
    assert choices[0]["text"] == "Hi!"  # the prompt comes first, in a chunk of its own
    assert "".join(c["text"] for c in choices) == whole["text"]
    streamed = [c["logprobs"] for c in choices if c["logprobs"]]
    assert [offset for lp in streamed for offset in lp["text_offset"]] == whole["logprobs"]["text_offset"]
    assert choices[-1]["finish_reason"] == "length"


def test_chat_logprobs_have_openais_shape(url):
    status, payload = call(url, "/v1/chat/completions", chat_body(max_tokens=1, logprobs=True, top_logprobs=1))
    assert payload["choices"][0]["logprobs"] == {
        "content": [{"token": "Hello", "logprob": -1.0, "bytes": list(b"Hello"),
                     "top_logprobs": [{"token": "?", "logprob": -2.0, "bytes": [63]}]}],
        "refusal": None}
    status, payload = call(url, "/v1/chat/completions", chat_body(max_tokens=1))
    assert payload["choices"][0]["logprobs"] is None
