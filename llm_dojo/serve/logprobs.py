"""Token log-probabilities for `dojo serve`: how the hf engine measures them, and the two shapes OpenAI returns.

What is measured: log_softmax of the model's next-token logits in float32, at temperature 1 (OpenAI's meaning:
how likely the model found the token, not the sampling distribution).
  - generated tokens: LogprobRecorder, a LogitsProcessor, records each step's logits. transformers runs the
    processors it is given after the ones the generation config turns on (repetition penalty and the like, which
    serve never sets; a model's own generation_config.json could) and before temperature and top-p, so with
    serve's settings these are the raw logits.
  - prompt tokens (`echo`): one plain forward of the prompt; the first token has no log-prob (nothing precedes it).
The shapes: chat's `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}` and the completions API's legacy
`{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from llm_dojo.serve.text import Detokenizer, token_text


@dataclass(frozen=True)
class Candidate:
    """One of the most likely tokens at a position."""

    token: str
    bytes: list[int]
    logprob: float


@dataclass
class TokenLogprob:
    """One token of an answer (or prompt) and how likely the model found it."""

    token: str
    bytes: list[int]
    logprob: Optional[float]  # None for a prompt's first token: nothing precedes it
    top: Optional[list[Candidate]]  # the most likely tokens at this position, best first (None with logprob None)
    offset: int = 0  # where the token's text starts, in characters from the start of its text (answer or prompt)


class LogprobRecorder:
    """A transformers LogitsProcessor that keeps each step's log-probs (float32) and leaves the scores unchanged."""

    def __init__(self):
        self.step: Optional[torch.Tensor] = None  # [batch, vocab], the latest step's

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.step = torch.log_softmax(scores.float(), dim=-1)
        return scores


def token_logprob(tokenizer, logprobs: torch.Tensor, token_id: int, top: int) -> TokenLogprob:
    """The entry for `token_id` given one position's log-probs [vocab], with its `top` most likely alternatives."""
    candidates = []
    if top > 0:
        values, ids = torch.topk(logprobs, top)
        for value, candidate_id in zip(values.tolist(), ids.tolist()):
            text, raw = token_text(tokenizer, candidate_id)
            candidates.append(Candidate(text, raw, value))
    text, raw = token_text(tokenizer, token_id)
    return TokenLogprob(text, raw, float(logprobs[token_id]), candidates)


def score_prompt(model, tokenizer, prompt_ids: list[int], top: Optional[int]) -> tuple[str, list[TokenLogprob]]:
    """The prompt's text and, when `top` is not None, each token's log-prob given the tokens before it."""
    detokenizer, text, offsets = Detokenizer(tokenizer, skip_special_tokens=False), "", []
    for token_id in prompt_ids:
        offsets.append(len(text))
        text += detokenizer.add(token_id)
    if top is None:
        return text, []
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt_ids], device=model.device)).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    first, first_bytes = token_text(tokenizer, prompt_ids[0])
    tokens = [TokenLogprob(first, first_bytes, None, None)]
    tokens += [token_logprob(tokenizer, logprobs[i - 1], prompt_ids[i], top) for i in range(1, len(prompt_ids))]
    for token, offset in zip(tokens, offsets):
        token.offset = offset
    return text, tokens


# --------------------------------------------------------------------------------------------------- OpenAI shapes


def chat_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    """`choices[i].logprobs` of a chat completion (or of one streamed chunk)."""
    return {"content": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes,
                         "top_logprobs": [{"token": c.token, "logprob": c.logprob, "bytes": c.bytes}
                                          for c in t.top or []]}
                        for t in tokens],
            "refusal": None}


def legacy_logprobs(tokens: list[TokenLogprob], shift: int = 0) -> dict[str, list]:
    """`choices[i].logprobs` of a text completion; `shift` is added to every text offset (the echoed prompt's length).

    As OpenAI does, each position's `top_logprobs` holds the most likely tokens plus the chosen one."""
    return {"tokens": [t.token for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [None if t.logprob is None else {**{c.token: c.logprob for c in t.top or []},
                                                              t.token: t.logprob}
                             for t in tokens],
            "text_offset": [shift + t.offset for t in tokens]}


def joined(first: dict[str, list], second: dict[str, list]) -> dict[str, list]:
    """Two legacy logprobs objects one after the other (an echoed prompt's, then the completion's)."""
    return {key: first[key] + second[key] for key in first}
