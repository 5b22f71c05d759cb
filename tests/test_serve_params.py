"""`dojo serve` honours seed, stop, logprobs, echo and token-id prompts: the embedded model over the openai client.

The references are computed locally: the greedy answer without a stop string (stop must cut it where OpenAI would,
and end generation there), and one fp32 forward of the model (the log-probs the server returns must equal it)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

openai = pytest.importorskip("openai")

from llm_dojo.models.loading import load_for_inference  # noqa: E402
from llm_dojo.serve.app import create_app, serve_in_background  # noqa: E402
from llm_dojo.serve.engines import HFEngine  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

MODEL_ID = "smollm2-135m-instruct"
FRANCE = "What is the capital of France?"  # greedy: "The capital of France is Paris."
STORY = "Tell me a story."
TEXT = "The capital of France is Paris, and the capital of Italy is Rome."


@pytest.fixture(scope="module")
def engine(one_torch_thread):
    model, tokenizer = load_for_inference(MODEL_ID, dtype=torch.float32)
    engine = HFEngine(model, tokenizer, MODEL_ID, stop_ids=[tokenizer.convert_tokens_to_ids("<|im_end|>")],
                      max_batch_size=8)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def client(engine):
    with serve_in_background(create_app(engine)) as base:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)


def chat(client, question: str, **kwargs):
    kwargs = {"max_tokens": 20, "temperature": 0, **kwargs}
    return client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": question}], **kwargs)


def streamed_chat(client, question: str, **kwargs) -> tuple[list[str], str]:
    """The content deltas of a streamed chat answer, and its finish reason."""
    deltas, finish_reason = [], None
    for chunk in chat(client, question, stream=True, **kwargs):
        for choice in chunk.choices:
            deltas.append(choice.delta.content or "")
            finish_reason = choice.finish_reason or finish_reason
    return deltas, finish_reason


def local_logprobs(engine, ids: list[int]) -> torch.Tensor:
    """log_softmax of one fp32 forward over `ids`: row i is the distribution of token i + 1."""
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


# --------------------------------------------------------------------------------------------------- seed


def test_seed_makes_a_sampled_request_reproducible_even_among_other_requests(client):
    def story(seed=None):
        return chat(client, STORY, max_tokens=12, temperature=1.0, seed=seed).choices[0].message.content

    alone = story(seed=1)
    assert story(seed=1) == alone
    assert story(seed=2) != alone
    # Queued together with unseeded requests of the same settings: a seeded request must not share their batch.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(story, seed) for seed in (None, 1, None, 1)]
        answers = [f.result() for f in futures]
    assert answers[1] == answers[3] == alone


# --------------------------------------------------------------------------------------------------- stop


@pytest.mark.parametrize("stop", [" of", "tal of Fr", ["Paris", " capital"], ["France", "e c"]],
                         ids=["one token", "across tokens", "earliest of two", "earliest starts first"])
def test_stop_string_ends_the_text_before_it_and_ends_generation(client, engine, stop):
    full = chat(client, FRANCE)
    text = full.choices[0].message.content
    assert text == "The capital of France is Paris."
    stops = [stop] if isinstance(stop, str) else stop
    expected = text[:min(text.find(s) for s in stops if s in text)]

    forwards = []
    hook = engine.model.register_forward_hook(lambda *args: forwards.append(1))  # one forward per generated token
    try:
        answer = chat(client, FRANCE, stop=stop)
    finally:
        hook.remove()
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens < full.usage.completion_tokens
    assert len(forwards) == answer.usage.completion_tokens, "generation should end at the stop string, not run on"
    deltas, finish_reason = streamed_chat(client, FRANCE, stop=stop)
    assert "".join(deltas) == expected and finish_reason == "stop"


@pytest.mark.parametrize("stop, max_tokens", [("Paris!!", 20), ("xyz", 20), ("Paris.", 6)],
                         ids=["a start of it appears", "never appears", "its start is cut by max_tokens"])
def test_text_held_back_for_a_stop_string_that_never_completes_is_sent(client, stop, max_tokens):
    reference = chat(client, FRANCE, max_tokens=max_tokens).choices[0]
    answer = chat(client, FRANCE, max_tokens=max_tokens, stop=stop).choices[0]
    deltas, finish_reason = streamed_chat(client, FRANCE, max_tokens=max_tokens, stop=stop)
    assert answer.message.content == "".join(deltas) == reference.message.content
    assert answer.finish_reason == finish_reason == reference.finish_reason


def test_completions_stop_streamed_and_whole_agree(client):
    prompt, stop = "The capital of France is", ["."]
    full = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=12, temperature=0).choices[0].text
    assert "." in full
    whole = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=12, temperature=0, stop=stop)
    streamed = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=12, temperature=0, stop=stop,
                                         stream=True)
    chunks = [chunk.choices[0] for chunk in streamed]
    assert whole.choices[0].text == "".join(c.text for c in chunks) == full[:full.index(".")]
    assert whole.choices[0].finish_reason == chunks[-1].finish_reason == "stop"


# --------------------------------------------------------------------------------------------------- logprobs


def check_prompt_logprobs(engine, logprobs, ids: list[int], top: int) -> None:
    """An echoed prompt's legacy logprobs (the first len(ids) entries) equal the local forward's, token by token."""
    reference = local_logprobs(engine, ids)
    tokenizer = engine.tokenizer
    assert logprobs.tokens[:len(ids)] == [tokenizer.decode([i]) for i in ids]
    assert logprobs.text_offset[:len(ids)] == [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    for i in range(1, len(ids)):
        assert logprobs.token_logprobs[i] == pytest.approx(reference[i - 1, ids[i]].item(), abs=1e-4)
        best = torch.topk(reference[i - 1], top)
        expected_top = {tokenizer.decode([t]): v for v, t in zip(best.values.tolist(), best.indices.tolist())}
        expected_top[tokenizer.decode([ids[i]])] = reference[i - 1, ids[i]].item()
        assert logprobs.top_logprobs[i] == pytest.approx(expected_top, abs=1e-4)


@pytest.mark.parametrize("as_ids", ["text", "token ids", "list of one token-id list"])
def test_echo_returns_the_prompts_logprobs_equal_to_a_local_forward(client, engine, as_ids):
    ids = engine.tokenizer(TEXT)["input_ids"]
    prompt = {"text": TEXT, "token ids": ids, "list of one token-id list": [ids]}[as_ids]
    response = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=0, echo=True, logprobs=3)
    choice = response.choices[0]
    assert choice.text == TEXT
    check_prompt_logprobs(engine, choice.logprobs, ids, top=3)
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (len(ids), 0)


def test_lm_eval_loglikelihood_request_scores_the_continuation(client, engine):
    """What lm-evaluation-harness's local-completions model sends, and how it reads the answer."""
    context = engine.tokenizer("The capital of France is")["input_ids"]
    continuation = engine.tokenizer(" Paris")["input_ids"]
    ids = context + continuation
    response = client.completions.create(model=MODEL_ID, prompt=[ids], max_tokens=1, echo=True, logprobs=1,
                                         temperature=0, seed=1234)
    logprobs = response.choices[0].logprobs
    assert len(logprobs.token_logprobs) == len(ids) + 1  # the prompt's tokens, then the one generated
    reference = local_logprobs(engine, ids)
    expected = sum(reference[i - 1, ids[i]].item() for i in range(len(context), len(ids)))
    assert sum(logprobs.token_logprobs[len(context):-1]) == pytest.approx(expected, abs=1e-4)
    is_greedy = all(lp == max(top.values()) for lp, top in zip(logprobs.token_logprobs[len(context):-1],
                                                                  logprobs.top_logprobs[len(context):-1]))
    assert is_greedy == all(reference[i - 1].argmax().item() == ids[i] for i in range(len(context), len(ids)))
    check_prompt_logprobs(engine, logprobs, ids, top=1)


def test_chat_logprobs_are_the_models_for_each_generated_token(client, engine):
    response = chat(client, FRANCE, logprobs=True, top_logprobs=3)
    content = response.choices[0].logprobs.content
    assert "".join(entry.token for entry in content) == response.choices[0].message.content
    prompt_ids = engine.encode_chat([{"role": "user", "content": FRANCE}])
    with torch.inference_mode():  # the same greedy answer, locally, for its token ids
        out = engine.model.generate(torch.tensor([prompt_ids]), max_new_tokens=len(content), do_sample=False)
    generated = out[0, len(prompt_ids):].tolist()
    assert [engine.tokenizer.decode([i]) for i in generated] == [entry.token for entry in content]
    reference = local_logprobs(engine, prompt_ids + generated)
    for i, entry in enumerate(content):
        row = reference[len(prompt_ids) + i - 1]
        assert entry.logprob == pytest.approx(row[generated[i]].item(), abs=1e-4)
        assert [t.token for t in entry.top_logprobs][0] == entry.token
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(torch.topk(row, 3).values.tolist(), abs=1e-4)
        assert bytes(entry.bytes).decode() == entry.token
    streamed = [entry for chunk in chat(client, FRANCE, logprobs=True, top_logprobs=3, stream=True)
                for choice in chunk.choices if choice.logprobs for entry in choice.logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-6)
