"""`dojo serve` with the embedded model, driven by the official `openai` client over loopback."""

from __future__ import annotations

import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

openai = pytest.importorskip("openai")

from llm_dojo.models.loading import load_for_inference  # noqa: E402
from llm_dojo.serve.app import create_app, serve_in_background  # noqa: E402
from llm_dojo.serve.engines import HFEngine  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

MODEL_ID = "smollm2-135m-instruct"
API_KEY = "test-key"
QUESTIONS = ["What is the capital of France?", "How many days are in a week?", "What is H2O?",
             "Name a primary color, in one word, please."]


@pytest.fixture(scope="module")
def engine(one_torch_thread):
    model, tokenizer = load_for_inference(MODEL_ID, dtype=torch.float32)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")  # ChatML: the only id the template ends a turn with
    engine = HFEngine(model, tokenizer, MODEL_ID, stop_ids=[end_of_turn], max_batch_size=16)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def url(engine):
    with serve_in_background(create_app(engine, api_key=API_KEY)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def ask(client, question: str, max_tokens: int = 12, **kwargs):
    return client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": question}],
                                          max_tokens=max_tokens, temperature=0, **kwargs)


def test_models_list_has_the_served_model(client):
    assert [model.id for model in client.models.list().data] == [MODEL_ID]


def test_chat_answers_and_stops_at_end_of_turn(client):
    response = ask(client, QUESTIONS[0], max_tokens=24)
    choice = response.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"
    assert "<|im_end|>" not in choice.message.content
    usage = response.usage
    assert usage.prompt_tokens > 10 and 0 < usage.completion_tokens < 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_text_equals_non_streamed_under_greedy(client):
    whole = ask(client, QUESTIONS[1], max_tokens=10).choices[0].message.content
    deltas, finish_reasons, usage = [], [], None
    for chunk in ask(client, QUESTIONS[1], max_tokens=10, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            deltas.append(choice.delta.content or "")
            finish_reasons.append(choice.finish_reason)
    assert "".join(deltas) == whole
    assert sum(1 for delta in deltas if delta) > 1, "the answer should arrive in several chunks"
    assert finish_reasons[-1] in ("stop", "length")
    assert usage is not None and usage.completion_tokens <= 10


def test_completions_continue_a_raw_prompt(client):
    response = client.completions.create(model=MODEL_ID, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert response.choices[0].text.strip()
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 4


def test_unknown_model_is_404_and_server_keeps_serving(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_ID, messages=[], max_tokens=2)
    assert ask(client, QUESTIONS[0], max_tokens=2).choices[0].message.content


def test_wrong_key_is_rejected(url):
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_32_concurrent_requests_succeed_while_health_answers(client, engine, url, monkeypatch):
    # Short prompts keep the prefill (the bulk of the CPU time here) small.
    short = ["Capital of France?", "Days in a week?", "What is H2O?", "Color of grass?"]

    def ask_briefly(question: str):
        return client.chat.completions.create(
            model=MODEL_ID, max_tokens=8, temperature=0,
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}])

    expected = {q: ask_briefly(q).choices[0].message.content for q in short}  # one request at a time

    # Count model calls running at the same moment: the single worker thread must keep this at 1.
    active, most_active, lock = 0, 0, threading.Lock()
    original_generate = engine.model.generate

    def counting_generate(*args, **kwargs):
        nonlocal active, most_active
        with lock:
            active += 1
            most_active = max(most_active, active)
        try:
            return original_generate(*args, **kwargs)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(engine.model, "generate", counting_generate)
    batches_before = engine.batches_run
    questions = [short[i % len(short)] for i in range(32)]
    health_latencies = []
    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(ask_briefly, q) for q in questions]
        while not all(f.done() for f in futures):
            start = time.monotonic()
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                assert response.status == 200
            health_latencies.append(time.monotonic() - start)
            time.sleep(0.1)
        answers = [f.result().choices[0].message.content for f in futures]

    assert answers == [expected[q] for q in questions], "batched greedy answers must equal one-by-one answers"
    assert len(health_latencies) >= 3 and max(health_latencies) < 2.0
    assert most_active == 1
    assert engine.batches_run - batches_before < 32, "queued requests should have been batched together"
