"""The generation engines behind `dojo serve`: both turn a prompt's token ids into a stream of events.

  HFEngine    transformers `generate()` in ONE worker thread fed by a queue. The worker takes the oldest request plus
              every queued request with the same sampling settings (up to max_batch_size) and generates them as one
              left-padded batch: dynamic batching, but never two model calls at once. Each row stops at its own
              end-of-turn token, stop string or max_tokens. A seeded sampled request runs alone (see _Request).
  VLLMEngine  vLLM's AsyncLLMEngine (continuous batching, paged attention); needs vllm and a CUDA GPU (vllm_engine.py).

Both stop at the `stop_ids` they are given (the chat format's end-of-turn ids, resolved once by the caller) and take
a GenerationParams per request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional, Union

import torch

from llm_dojo.infer.common import encode_chat, encode_text, generation_config, left_padded_batch, pad_token_id
from llm_dojo.serve.logprobs import LogprobRecorder, TokenLogprob, score_prompt, token_logprob
from llm_dojo.serve.text import RowText

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationParams:
    """What one request asks of an engine (the app builds it from the OpenAI request)."""

    max_tokens: int  # tokens to generate at most; 0 only with echo (score the prompt, generate nothing)
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: Optional[int] = None  # makes a sampled request reproducible
    stop: tuple[str, ...] = ()  # the text ends before the first of these strings
    logprobs: Optional[int] = None  # None: none; k: each token's log-prob and its k most likely alternatives
    echo: bool = False  # send the prompt back first (a Prompt event), scored when logprobs is set


# --------------------------------------------------------------------------------------------------- engine events


@dataclass
class Prompt:
    """The echoed prompt (only with echo), sent before any generated text; logprobs when they were asked for."""

    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class TextDelta:
    """New text for one request, and the log-probs of the tokens it completes (when asked for)."""

    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Finished:
    """The request is done: why, and how many tokens it used (completion tokens include the end-of-turn token)."""

    finish_reason: str  # "stop" (end of turn or stop string) or "length" (max_tokens)
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    """Generation raised; the message goes back to the client as a server error."""

    message: str


Event = Union[Prompt, TextDelta, Finished, Failed]


# --------------------------------------------------------------------------------------------------- HF backend


@dataclass
class _Request:
    """One queued generation, plus what the worker thread needs to talk back to the event loop."""

    prompt_ids: list[int]
    params: GenerationParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    cancelled: bool = False  # set by the event loop when the client went away
    # worker-side state
    completion_tokens: int = 0
    finish_reason: Optional[str] = None
    text: Optional[RowText] = None

    @property
    def sampling_key(self) -> tuple:
        """Requests with the same key can share one generate() call.

        A seeded sampled request gets a key of its own: its random draws must not depend on which other requests
        happen to share its batch, so it runs alone. Greedy requests ignore the seed."""
        p = self.params
        if p.temperature == 0:
            return ("greedy",)
        if p.seed is not None:
            return ("seeded", id(self))
        return ("sampled", p.temperature, p.top_p)

    def send(self, event: Event) -> None:
        """Hand an event to the request's coroutine (called from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancelled = True


class _RowTracker:
    """A stopping criterion that also turns each row's new token into text; transformers calls it once per step.

    Per row it counts the token, ends the row at an end-of-turn id, a stop string or max_tokens, and sends the text
    that is safe to send. Ending a row here, in the step that produced its stop string, is what makes a stop string
    stop generation instead of cutting the text afterwards."""

    def __init__(self, batch: list[_Request], tokenizer, stop_ids: list[int], recorder: Optional[LogprobRecorder]):
        self.batch, self.tokenizer, self.stop_ids, self.recorder = batch, tokenizer, set(stop_ids), recorder

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        for row, token_id in enumerate(input_ids[:, -1].tolist()):
            request = self.batch[row]
            if request.finish_reason is None and not request.cancelled:
                self.take(row, request, token_id)
        done = [r.cancelled or r.finish_reason is not None for r in self.batch]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def take(self, row: int, request: _Request, token_id: int) -> None:
        """One new token of one live row."""
        request.completion_tokens += 1
        if token_id in self.stop_ids:
            request.finish_reason = "stop"
        else:
            logprob = None
            if request.params.logprobs is not None:
                logprob = token_logprob(self.tokenizer, self.recorder.step[row], token_id, request.params.logprobs)
            if request.text.add(token_id, logprob):
                request.finish_reason = "stop"
            elif request.completion_tokens >= request.params.max_tokens:
                request.finish_reason = "length"
        self.flush(request)

    @staticmethod
    def flush(request: _Request) -> None:
        """Send what the row's text releases (everything that is left, once the row has ended)."""
        text, logprobs = request.text.release(final=request.finish_reason is not None)
        if (text or logprobs) and not request.cancelled:
            request.send(TextDelta(text, logprobs))


class HFEngine:
    """transformers generation behind a queue: one worker thread, dynamic batches of compatible requests."""

    def __init__(self, model, tokenizer, model_id: str, *, stop_ids: list[int], max_batch_size: int = 8):
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.max_batch_size = max(1, max_batch_size)
        self.stop_ids = checked_stop_ids(stop_ids)
        self.context_window = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.vocab_size = len(tokenizer)
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

    async def generate(self, prompt_ids: list[int], params: GenerationParams) -> AsyncIterator[Event]:
        """Queue one generation and yield its events; closing the iterator early cancels the request."""
        request = _Request(prompt_ids, params, asyncio.get_running_loop(), asyncio.Queue())
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
        """Echo (and score) prompts that ask for it, then one generate() call for the rows that generate."""
        for request in batch:
            if request.params.echo:
                text, logprobs = score_prompt(self.model, self.tokenizer, request.prompt_ids, request.params.logprobs)
                request.send(Prompt(text, logprobs))
            if request.params.max_tokens == 0:
                request.send(Finished("length", len(request.prompt_ids), 0))
        batch = [r for r in batch if r.params.max_tokens > 0]
        if batch:
            self._generate(batch)
        for request in batch:
            request.send(Finished(request.finish_reason, len(request.prompt_ids), request.completion_tokens))

    def _generate(self, batch: list[_Request]) -> None:
        """One left-padded generate() call; _RowTracker streams each row's text to its request."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        inputs = left_padded_batch(self.tokenizer, [r.prompt_ids for r in batch], self.model.device)
        for request in batch:
            request.text = RowText(self.tokenizer, request.params.stop)
        recorder = LogprobRecorder() if any(r.params.logprobs is not None for r in batch) else None
        tracker = _RowTracker(batch, self.tokenizer, self.stop_ids, recorder)
        first = batch[0].params  # the batch shares its sampling settings (sampling_key)
        config = generation_config(self.stop_ids, pad_token_id(self.tokenizer),
                                   max_new_tokens=max(r.params.max_tokens for r in batch),
                                   temperature=first.temperature, top_p=first.top_p)
        seeded = first.seed is not None and first.temperature > 0  # then the batch is this one request
        if seeded:
            # generate() takes no torch.Generator, so seed the global one. Safe here: this worker thread is the only
            # code that runs the model or samples, and model calls never overlap (self._busy).
            torch.manual_seed(first.seed)
        try:
            with torch.inference_mode():
                self.model.generate(**inputs, generation_config=config,
                                    stopping_criteria=StoppingCriteriaList([tracker]),
                                    logits_processor=LogitsProcessorList([recorder] if recorder else []))
        finally:
            if seeded:
                torch.seed()  # reseed from the OS, so later unseeded requests do not replay this seed's stream
        for request in batch:
            if request.finish_reason is None:  # generate() ended first (the model's context length)
                request.finish_reason = "length"
                tracker.flush(request)


def checked_stop_ids(stop_ids: list[int]) -> list[int]:
    """The stop ids as a list; without any, every answer would run to max_tokens."""
    if not stop_ids:
        raise ValueError("stop_ids is empty: pass the chat format's end-of-turn token ids (loaded.stop_ids)")
    return [int(token_id) for token_id in stop_ids]
