"""The vLLM engine behind `dojo serve --backend vllm`: vLLM's AsyncLLMEngine behind HFEngine's interface.

The request's settings map onto vllm.SamplingParams: seed, stop (vLLM cuts the text before the stop string and holds
back a possible start of one while streaming), logprobs and, for echo, prompt_logprobs. vLLM's log-probs are those
of the raw logits, like the hf engine's. Token text offsets add up the tokens' own texts, as vLLM's own server does.
Not run in this repository's tests (they have no GPU).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import torch

from llm_dojo.infer.common import encode_chat, encode_text
from llm_dojo.serve.engines import Event, Failed, Finished, GenerationParams, Prompt, TextDelta, checked_stop_ids
from llm_dojo.serve.logprobs import Candidate, TokenLogprob
from llm_dojo.serve.text import token_text


class VLLMEngine:
    """vLLM's AsyncLLMEngine behind the same interface as HFEngine (continuous batching on a CUDA GPU)."""

    def __init__(self, model: str, adapter: Optional[str], tokenizer, model_id: str, *, stop_ids: list[int],
                 max_batch_size: int, dtype: str = "auto", load_in_4bit: bool = False, trust_remote_code: bool = False):
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        self.tokenizer, self.model_id = tokenizer, model_id
        self.stop_ids = checked_stop_ids(stop_ids)
        self.vocab_size = len(tokenizer)
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
        """Prompt ids for a conversation, rendered by the tokenizer's chat template."""
        return encode_chat(self.tokenizer, messages)

    def encode_text(self, text: str) -> list[int]:
        """Prompt ids for a raw text (no chat template)."""
        return encode_text(self.tokenizer, text)

    def sampling_params(self, params: GenerationParams):
        """vllm.SamplingParams for a request (vLLM generates at least one token; with max_tokens 0 it is dropped)."""
        from vllm import SamplingParams

        return SamplingParams(n=1, max_tokens=max(params.max_tokens, 1), temperature=params.temperature,
                              top_p=params.top_p if params.temperature else 1.0, seed=params.seed,
                              stop=list(params.stop) or None, include_stop_str_in_output=False,
                              stop_token_ids=self.stop_ids, logprobs=params.logprobs,
                              prompt_logprobs=params.logprobs if params.echo else None)

    async def generate(self, prompt_ids: list[int], params: GenerationParams) -> AsyncIterator[Event]:
        """Submit one generation to vLLM and yield its events; closing the iterator early aborts the request."""
        if params.max_tokens == 0 and params.logprobs is None:  # echo of an unscored prompt: nothing to run
            yield Prompt(self.tokenizer.decode(prompt_ids))
            yield Finished("length", len(prompt_ids), 0)
            return
        request_id = uuid.uuid4().hex
        sent_text, sent_tokens, offset, output, echoed = "", 0, 0, None, not params.echo
        try:
            async for output in self.engine.generate({"prompt_token_ids": prompt_ids}, self.sampling_params(params),
                                                     request_id, lora_request=self.lora_request):
                if not echoed:  # vLLM's first output carries the prompt's log-probs
                    yield self.prompt_event(prompt_ids, output.prompt_logprobs, params.logprobs)
                    echoed = True
                if params.max_tokens == 0:
                    continue
                completion = output.outputs[0]  # cumulative text, token ids and logprobs
                new_tokens = []
                if params.logprobs is not None:
                    new = zip(completion.token_ids[sent_tokens:], completion.logprobs[sent_tokens:])
                    for token_id, position in new:
                        new_tokens.append(self.token_entry(token_id, position, params.logprobs, offset))
                        offset += len(new_tokens[-1].token)
                sent_tokens = len(completion.token_ids)
                if len(completion.text) > len(sent_text) or new_tokens:
                    yield TextDelta(completion.text[len(sent_text):], new_tokens)
                    sent_text = completion.text
        except Exception as error:  # noqa: BLE001 - report to the client
            yield Failed(f"generation failed: {type(error).__name__}: {error}")
            return
        finally:
            if output is None or not output.finished:
                await self.engine.abort(request_id)
        completion = output.outputs[0]
        if params.max_tokens == 0:
            yield Finished("length", len(prompt_ids), 0)
        else:
            reason = "stop" if completion.finish_reason == "stop" else "length"
            yield Finished(reason, len(prompt_ids), len(completion.token_ids))

    def token_entry(self, token_id: int, position: Optional[dict], top: int, offset: int) -> TokenLogprob:
        """A TokenLogprob from vLLM's {token id: Logprob(logprob, rank, decoded_token)} for one position."""
        text, raw = token_text(self.tokenizer, token_id)
        if position is None:
            return TokenLogprob(text, raw, None, None, offset)
        ranked = sorted(((lp.rank, tid, lp) for tid, lp in position.items() if lp.rank is not None and lp.rank <= top))
        candidates = [Candidate(*token_text(self.tokenizer, tid), lp.logprob) for _, tid, lp in ranked[:top]]
        return TokenLogprob(text, raw, position[token_id].logprob, candidates, offset)

    def prompt_event(self, prompt_ids: list[int], prompt_logprobs: Optional[list], top: Optional[int]) -> Prompt:
        """The echoed prompt, with vLLM's prompt log-probs (None for the first token) when they were asked for."""
        if top is None or prompt_logprobs is None:
            return Prompt(self.tokenizer.decode(prompt_ids))
        tokens, offset = [], 0
        for token_id, position in zip(prompt_ids, prompt_logprobs):
            tokens.append(self.token_entry(token_id, position, top, offset))
            offset += len(tokens[-1].token)
        return Prompt(self.tokenizer.decode(prompt_ids), tokens)

    def close(self) -> None:
        """Shut the vLLM engine down (when this vLLM version can)."""
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
