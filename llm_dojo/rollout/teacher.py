"""Teacher log-probs for on-policy distillation: how likely a teacher model finds each token the student sampled.

Every sampled completion token t_k gets the advantage  teacher_logp(t_k) - student_logp(t_k),  both given the prompt
and the completion tokens before t_k. A teacher supplies the first half, one float32 CPU tensor per sequence:

  LocalTeacher   a causal LM in this process: one right-padded forward per micro-batch.
  ServerTeacher  an OpenAI-compatible server (`dojo serve`, vLLM): POST /v1/completions with prompt + completion as
                 token ids, `echo: true`, `max_tokens: 0`, `logprobs: 1` (lm-evaluation-harness's loglikelihood
                 request); the completion's entries of the echoed `token_logprobs` are the answer.

Teacher and student must share a tokenizer: the ids are scored as they are, never re-tokenised.
tests/test_teacher_logps.py checks that both equal a plain forward pass of the same model.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Protocol, runtime_checkable

import torch

logger = logging.getLogger(__name__)

# The echoed prompt's log-probs come with `logprobs: N` alternatives per position. OpenAI's spec allows 0 (only the
# token's own log-prob) and dojo serve accepts it, but vLLM 0.3 answered logprobs=0 with null log-probs
# (vllm-project/vllm#3707); 1 is what lm-evaluation-harness sends and every server we know answers it.
LOGPROBS = 1


@runtime_checkable
class Teacher(Protocol):
    """Anything that scores sampled completions: LocalTeacher, ServerTeacher, or a stand-in in tests."""

    def completion_logps(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[torch.Tensor]:
        """Per sequence, the float32 log-prob of each completion token given the prompt and the tokens before it."""
        ...


def check_pairs(prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> None:
    """Refuse lists of different lengths and empty prompts (a first token has no log-prob: nothing precedes it)."""
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions: pass one completion "
                         f"per prompt (repeat a prompt for each of its samples)")
    for index, prompt in enumerate(prompt_ids):
        if len(prompt) == 0:
            raise ValueError(f"prompt {index} is empty: the first completion token needs at least one token before it")


# --------------------------------------------------------------------------------------------------- local


class LocalTeacher:
    """A causal LM in this process (loaded, in eval mode) that scores completions in right-padded micro-batches.

    Right padding sits after every real token, so a causal model's logits at real positions do not see it; the
    attention mask and position_ids (counted from the mask) make that hold for any model. Lower `batch_size` when
    the logits [batch, longest sequence, vocab] do not fit in memory."""

    def __init__(self, model, device: Optional[torch.device | str] = None, batch_size: int = 8):
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.batch_size = max(1, batch_size)

    def completion_logps(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[torch.Tensor]:
        """Per sequence, the float32 log-prob of each completion token given the prompt and the tokens before it."""
        check_pairs(prompt_ids, completion_ids)
        scores: list[torch.Tensor] = []
        for start in range(0, len(prompt_ids), self.batch_size):
            end = start + self.batch_size
            scores += self.score_batch(prompt_ids[start:end], completion_ids[start:end])
        return scores

    # no_grad, not inference_mode: an inference tensor multiplied by a tensor that needs grad (advantage * student
    # log-prob) raises, and the caller's loss does exactly that
    @torch.no_grad()
    def score_batch(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[torch.Tensor]:
        """One right-padded forward of prompt + completion for each pair; the completion positions' log-probs."""
        sequences = [list(prompt) + list(completion) for prompt, completion in zip(prompt_ids, completion_ids)]
        width = max(len(sequence) for sequence in sequences)
        input_ids = torch.zeros((len(sequences), width), dtype=torch.long)  # the pad id is masked: any id will do
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, :len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[row, :len(sequence)] = 1
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
        logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                            position_ids=position_ids.to(self.device)).logits
        scores = []
        for row, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids)):
            # the logits at position i predict token i + 1: the prompt's last one predicts the first completion token
            first = len(prompt) - 1
            logprobs = torch.log_softmax(logits[row, first:first + len(completion)].float(), dim=-1)
            targets = torch.tensor(completion, dtype=torch.long, device=logprobs.device)
            scores.append(logprobs.gather(-1, targets[:, None])[:, 0].cpu())
        return scores


# --------------------------------------------------------------------------------------------------- server


class TeacherError(RuntimeError):
    """The teacher server could not be reached, refused the request, or answered something unusable."""


class ServerTeacher:
    """An OpenAI-compatible server (`dojo serve`, vLLM) that scores completions through /v1/completions with echo.

    One request per sequence (dojo serve takes one prompt per request), up to `max_concurrency` in flight: servers
    batch concurrent requests. `model` defaults to the one model the server lists at /v1/models."""

    def __init__(self, base_url: str, model: Optional[str] = None, api_key: Optional[str] = None,
                 timeout: float = 600, max_concurrency: int = 8):
        base_url = base_url.rstrip("/")
        self.base_url = base_url[:-len("/v1")] if base_url.endswith("/v1") else base_url  # OpenAI clients' habit
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.max_concurrency = max(1, max_concurrency)

    def completion_logps(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[torch.Tensor]:
        """Per sequence, the float32 log-prob of each completion token given the prompt and the tokens before it."""
        check_pairs(prompt_ids, completion_ids)
        model = self.model_id()
        pairs = list(zip(prompt_ids, completion_ids))
        if len(pairs) <= 1 or self.max_concurrency == 1:
            return [self.score(model, prompt, completion) for prompt, completion in pairs]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(pairs))) as pool:
            return list(pool.map(lambda pair: self.score(model, *pair), pairs))

    def model_id(self) -> str:
        """The model to ask for: the one given, else the only one the server lists."""
        if self.model is None:
            listed = [entry.get("id") for entry in self.request("/v1/models").get("data") or []]
            if len(listed) != 1:
                raise TeacherError(f"{self.base_url}/v1/models lists {len(listed)} models ({listed}): "
                                   f"name the teacher's model explicitly")
            self.model = listed[0]
        return self.model

    def score(self, model: str, prompt: list[int], completion: list[int]) -> torch.Tensor:
        """One request: the echoed log-probs of prompt + completion, the completion's part of them."""
        if not completion:
            return torch.zeros(0, dtype=torch.float32)
        ids = [int(token_id) for token_id in prompt] + [int(token_id) for token_id in completion]
        answer = self.request("/v1/completions", {"model": model, "prompt": ids, "echo": True, "max_tokens": 0,
                                                  "logprobs": LOGPROBS, "temperature": 0})
        token_logprobs = echoed_logprobs(answer, f"{self.base_url}/v1/completions")
        if len(token_logprobs) != len(ids):
            raise TeacherError(
                f"the teacher server echoed {len(token_logprobs)} log-probs for {len(ids)} token ids "
                f"({len(prompt)} prompt + {len(completion)} completion): it tokenised the prompt differently "
                f"(re-tokenised the ids as text, added a BOS token, or generated despite max_tokens: 0). Teacher "
                f"and student must share a tokenizer; the server runs {model!r}")
        values = token_logprobs[len(prompt):]
        missing = [k for k, value in enumerate(values) if not isinstance(value, (int, float))]
        if missing:
            raise TeacherError(
                f"the teacher server returned {values[missing[0]]!r} instead of a log-prob for completion token "
                f"{missing[0]} (position {len(prompt) + missing[0]}); it must support echo with logprobs on "
                f"/v1/completions")
        return torch.tensor(values, dtype=torch.float32)

    def request(self, path: str, body: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """GET `path` (POST when there is a body) and the JSON answer; a TeacherError naming the URL otherwise."""
        url = self.base_url + path
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:  # before URLError: it is one
            raise TeacherError(f"the teacher server answered {url} with HTTP {error.code}: "
                               f"{snippet(error.read())}") from None
        except urllib.error.URLError as error:
            raise TeacherError(f"cannot reach the teacher server at {url}: {error.reason}; is it running "
                               f"(`dojo serve`, `vllm serve`) and is the base URL right?") from None
        except TimeoutError:
            raise TeacherError(f"the teacher server at {url} did not answer within {self.timeout} s") from None
        except ConnectionError as error:
            raise TeacherError(f"the connection to the teacher server at {url} failed: {error}") from None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise TeacherError(f"the teacher server at {url} did not answer with JSON: {snippet(raw)}") from None


def echoed_logprobs(answer: dict[str, Any], url: str) -> list:
    """`choices[0].logprobs.token_logprobs` of a completions answer, or a TeacherError saying what is missing."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not choices or not isinstance(choices, list):
        raise TeacherError(f"the answer of {url} has no choices: {snippet(json.dumps(answer))}")
    logprobs = choices[0].get("logprobs") or {}
    token_logprobs = logprobs.get("token_logprobs")
    if not isinstance(token_logprobs, list):
        raise TeacherError(f"the answer of {url} has no choices[0].logprobs.token_logprobs (does the server support "
                           f"echo with logprobs?): {snippet(json.dumps(choices[0]))}")
    return token_logprobs


def snippet(text: bytes | str, limit: int = 500) -> str:
    """The start of a response body, for an error message."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "…"
