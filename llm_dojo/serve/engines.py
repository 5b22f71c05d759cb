"""The generation engines behind `dojo serve`: both turn a prompt's token ids into a stream of events.

  HFEngine    transformers `generate()` in ONE worker thread fed by a queue. The worker takes the oldest request plus
              every queued request with the same sampling settings (up to max_batch_size) and generates them as one
              left-padded batch: dynamic batching, but never two model calls at once. Each row stops at its own
              end-of-turn token or max_tokens.
  VLLMEngine  vLLM's AsyncLLMEngine (continuous batching, paged attention); needs vllm and a CUDA GPU.

Both stop at the `stop_ids` they are given (the chat format's end-of-turn ids, resolved once by the caller).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Optional, Union

import torch

from llm_dojo.infer.common import (
    IncrementalDecoder,
    RowStreamer,
    encode_chat,
    encode_text,
    generation_config,
    left_padded_batch,
    pad_token_id,
)

logger = logging.getLogger(__name__)


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

    def __init__(self, model, tokenizer, model_id: str, *, stop_ids: list[int], max_batch_size: int = 8):
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.max_batch_size = max(1, max_batch_size)
        self.stop_ids = _checked_stop_ids(stop_ids)
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
        """Prompt ids for a conversation, rendered by the tokenizer's chat template."""
        return encode_chat(self.tokenizer, messages)

    def encode_text(self, text: str) -> list[int]:
        """Prompt ids for a raw text (no chat template)."""
        return encode_text(self.tokenizer, text)

    @property
    def queued(self) -> int:
        """Requests waiting for the worker (shown by /health)."""
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
        """The worker thread: run batches until close()."""
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
        """One generate() call for the batch, streaming each row's text to its request."""
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

    def __init__(self, model: str, adapter: Optional[str], tokenizer, model_id: str, *, stop_ids: list[int],
                 max_batch_size: int, dtype: str = "auto", load_in_4bit: bool = False, trust_remote_code: bool = False):
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        self.tokenizer, self.model_id = tokenizer, model_id
        self.stop_ids = _checked_stop_ids(stop_ids)
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

    async def generate(self, prompt_ids: list[int], *, max_tokens: int, temperature: float,
                       top_p: float) -> AsyncIterator[Event]:
        """Submit one generation to vLLM and yield its events; closing the iterator early aborts the request."""
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
        """Shut the vLLM engine down (when this vLLM version can)."""
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()


def _checked_stop_ids(stop_ids: list[int]) -> list[int]:
    """The stop ids as a list; without any, every answer would run to max_tokens."""
    if not stop_ids:
        raise ValueError("stop_ids is empty: pass the chat format's end-of-turn token ids (loaded.stop_ids)")
    return [int(token_id) for token_id in stop_ids]


def check_vllm_available() -> None:
    """Raise a clear error when the vllm backend cannot run here."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError("--backend vllm needs the vllm package (pip install 'llm-dojo[vllm]'); "
                           "use --backend hf to serve with transformers")
    if not torch.cuda.is_available():
        raise RuntimeError("--backend vllm needs a CUDA GPU and none is visible; use --backend hf")
