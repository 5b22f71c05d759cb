"""VLLMEngine's mapping of a request onto vllm.SamplingParams and of vLLM's outputs onto engine events.

vLLM needs a CUDA GPU, so a stand-in `vllm` module records the SamplingParams and a scripted AsyncLLMEngine replays
outputs shaped like vLLM's (cumulative text and token ids, per-position {token id: Logprob} dicts)."""

from __future__ import annotations

import asyncio
import sys
import types
from types import SimpleNamespace as NS

import pytest

from llm_dojo.serve.engines import Finished, GenerationParams, Prompt, TextDelta
from llm_dojo.serve.vllm_engine import VLLMEngine


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.SamplingParams = lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "vllm", module)


class ScriptedVLLM:
    """Replays `outputs` for every request; remembers the SamplingParams it was given."""

    def __init__(self, outputs):
        self.outputs, self.params = outputs, None

    async def generate(self, prompt, params, request_id, lora_request=None):
        self.params = params
        for output in self.outputs:
            yield output

    async def abort(self, request_id):
        pass


def logprob(value, rank):
    return NS(logprob=value, rank=rank, decoded_token=None)


def engine_with(smol_tokenizer, outputs) -> VLLMEngine:
    engine = object.__new__(VLLMEngine)  # no vLLM here: only what generate() uses
    engine.tokenizer, engine.stop_ids, engine.lora_request = smol_tokenizer, [2], None
    engine.engine = ScriptedVLLM(outputs)
    return engine


def run(engine, prompt_ids, params):
    async def collect():
        return [event async for event in engine.generate(prompt_ids, params)]

    return asyncio.run(collect())


def test_request_settings_map_onto_sampling_params_and_outputs_onto_events(fake_vllm, smol_tokenizer):
    the, capital, of, dot = (smol_tokenizer.convert_tokens_to_ids(t) for t in ["The", "Ġcapital", "Ġof", "."])
    prompt_ids = [the, capital]
    prompt_logprobs = [None, {capital: logprob(-2.0, 3), of: logprob(-0.5, 1)}]
    step = NS(text=" of", token_ids=[of], logprobs=[{of: logprob(-0.1, 1), dot: logprob(-3.0, 2)}], finish_reason=None)
    last = NS(text=" of.", token_ids=[of, dot], logprobs=step.logprobs + [{dot: logprob(-0.2, 1)}], finish_reason="stop")
    outputs = [NS(outputs=[step], finished=False, prompt_logprobs=prompt_logprobs),
               NS(outputs=[last], finished=True, prompt_logprobs=prompt_logprobs)]
    engine = engine_with(smol_tokenizer, outputs)
    params = GenerationParams(max_tokens=5, temperature=0.7, top_p=0.9, seed=3, stop=("!",), logprobs=1, echo=True)
    events = run(engine, prompt_ids, params)

    sent = engine.engine.params
    assert (sent["seed"], sent["stop"], sent["stop_token_ids"], sent["logprobs"], sent["prompt_logprobs"]) == (
        3, ["!"], [2], 1, 1)
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["include_stop_str_in_output"]) == (
        5, 0.7, 0.9, False)
    prompt, first, second, finished = events
    assert isinstance(prompt, Prompt) and prompt.text == "The capital"
    assert [(t.token, t.logprob) for t in prompt.logprobs] == [("The", None), (" capital", -2.0)]
    assert [c.token for c in prompt.logprobs[1].top] == [" of"]  # rank 1 only: top 1
    assert isinstance(first, TextDelta) and (first.text, [t.token for t in first.logprobs]) == (" of", [" of"])
    assert (second.text, [(t.token, t.logprob, t.offset) for t in second.logprobs]) == (".", [(".", -0.2, 3)])
    assert finished == Finished("stop", 2, 2)


def test_max_tokens_zero_with_echo_scores_the_prompt_and_drops_the_generated_token(fake_vllm, smol_tokenizer):
    the, capital = (smol_tokenizer.convert_tokens_to_ids(t) for t in ["The", "Ġcapital"])
    output = NS(outputs=[NS(text=" x", token_ids=[9], logprobs=[{9: logprob(-1.0, 1)}], finish_reason="length")],
                finished=True, prompt_logprobs=[None, {capital: logprob(-2.0, 1)}])
    engine = engine_with(smol_tokenizer, [output])
    events = run(engine, [the, capital], GenerationParams(max_tokens=0, logprobs=0, echo=True))
    assert engine.engine.params["max_tokens"] == 1 and engine.engine.params["prompt_logprobs"] == 0
    assert [type(e).__name__ for e in events] == ["Prompt", "Finished"]
    assert events[0].logprobs[1].logprob == -2.0 and events[-1] == Finished("length", 2, 0)
