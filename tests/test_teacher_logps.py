"""Teacher log-probs for on-policy distillation: LocalTeacher, ServerTeacher over `dojo serve`, and a plain forward
agree token by token; a server that cannot be reached or answers something unusable gives an error that says why.

The tiny model's embeddings are scaled up so its next-token distributions are sharp: a log-prob read one position
too early or too late is off by far more than the tolerance."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import torch

from llm_dojo.rollout.teacher import LocalTeacher, ServerTeacher, Teacher, TeacherError
from llm_dojo.serve.app import create_app, serve_in_background
from llm_dojo.serve.engines import HFEngine

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL_ID = "tiny-teacher"
API_KEY = "teacher-key"
# (prompt length, completion length): a one-token prompt, an empty completion, and rows much shorter than the
# longest, so every micro-batch of LocalTeacher(batch_size=3) is padded
LENGTHS = [(5, 7), (1, 3), (12, 1), (3, 0), (2, 9), (8, 4)]


def random_pairs(vocab_size: int, lengths=LENGTHS, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    draw = lambda n: torch.randint(0, vocab_size, (n,), generator=generator).tolist()  # noqa: E731
    return [draw(p) for p, _ in lengths], [draw(c) for _, c in lengths]


def plain_logps(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """The reference: one unpadded fp32 forward of prompt + completion, log_softmax, the completion tokens' entries."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return torch.tensor([logprobs[len(prompt) + k - 1, token].item() for k, token in enumerate(completion)])


def assert_all_close(got: list[torch.Tensor], expected: list[torch.Tensor], atol: float = 1e-4) -> float:
    """Same shapes, float32, equal to `atol`; returns the largest difference."""
    assert [g.shape for g in got] == [e.shape for e in expected]
    assert all(g.dtype == torch.float32 for g in got)
    worst = max((float((g - e).abs().max()) for g, e in zip(got, expected) if e.numel()), default=0.0)
    assert worst <= atol, f"max abs difference {worst}"
    return worst


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), dtype=torch.float32).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20)  # tied: the logits scale too (see the module docstring)
    return model


@pytest.fixture(scope="module")
def tiny_url(tiny, smol_tokenizer):
    engine = HFEngine(tiny, smol_tokenizer, MODEL_ID, stop_ids=[smol_tokenizer.eos_token_id])
    with serve_in_background(create_app(engine, api_key=API_KEY)) as url:
        yield url
    engine.close()


# --------------------------------------------------------------------------------------------------- parity


def test_local_teacher_equals_a_plain_forward_despite_padding(tiny):
    prompts, completions = random_pairs(tiny.config.vocab_size)
    expected = [plain_logps(tiny, p, c) for p, c in zip(prompts, completions)]
    assert max(float(e.max() - e.min()) for e in expected if e.numel()) > 1.0, "the model should not be near-uniform"
    teacher = LocalTeacher(tiny, batch_size=3)
    got = teacher.completion_logps(prompts, completions)
    assert_all_close(got, expected)
    assert isinstance(teacher, Teacher)
    # the caller multiplies by the student's log-probs, which need grad: an inference-mode tensor would raise here
    student = torch.zeros(len(completions[0]), requires_grad=True)
    (got[0] * student).sum().backward()


def test_server_teacher_through_dojo_serve_equals_local_teacher_and_a_plain_forward(tiny, tiny_url):
    prompts, completions = random_pairs(tiny.config.vocab_size)
    # "/v1" as OpenAI clients write it; no model: the one the server lists
    teacher = ServerTeacher(f"{tiny_url}/v1", api_key=API_KEY)
    got = teacher.completion_logps(prompts, completions)
    assert teacher.model == MODEL_ID
    assert_all_close(got, LocalTeacher(tiny).completion_logps(prompts, completions))
    assert_all_close(got, [plain_logps(tiny, p, c) for p, c in zip(prompts, completions)])


def test_mismatched_or_empty_inputs_are_refused(tiny):
    teacher = LocalTeacher(tiny)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        teacher.completion_logps([[1], [2]], [[3]])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        teacher.completion_logps([[1], []], [[3], [4]])


# --------------------------------------------------------------------------------------------------- errors


def test_unreachable_server_names_the_url():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    teacher = ServerTeacher(f"http://127.0.0.1:{port}", model="m", timeout=5)
    with pytest.raises(TeacherError, match=rf"cannot reach the teacher server at http://127\.0\.0\.1:{port}/v1/"):
        teacher.completion_logps([[1, 2]], [[3]])


def test_http_error_shows_status_and_body(tiny_url):
    teacher = ServerTeacher(tiny_url, model=MODEL_ID, api_key="wrong")
    with pytest.raises(TeacherError, match="HTTP 401: .*invalid or missing API key"):
        teacher.completion_logps([[1, 2]], [[3]])


@pytest.fixture
def fake_server():
    """An OpenAI-ish server that answers every POST with `reply` (status, body) and records the requests."""
    state = SimpleNamespace(requests=[], reply=(200, {}))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            state.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            status, body = state.reply
            payload = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def echoed(token_logprobs) -> dict:
    return {"choices": [{"index": 0, "text": "", "logprobs": {"token_logprobs": token_logprobs}}]}


def test_request_is_lm_eval_shaped_and_the_completion_entries_are_kept(fake_server):
    fake_server.reply = (200, echoed([None, -1.0, -2.0, -3.5, -0.25]))
    got = ServerTeacher(fake_server.url, model="m").completion_logps([[1, 2, 3]], [[4, 5]])
    assert got[0].tolist() == [-3.5, -0.25]
    assert fake_server.requests == [{"model": "m", "prompt": [1, 2, 3, 4, 5], "echo": True, "max_tokens": 0,
                                     "logprobs": 1, "temperature": 0}]


@pytest.mark.parametrize("reply, message", [
    ((200, echoed([None, -0.5, -1.0, -2.0, -3.5, -0.25])), r"echoed 6 log-probs for 5 token ids .*tokenised"),
    ((200, echoed([None, -1.0, -2.0, None, -0.25])), r"returned None instead of a log-prob for completion token 0"),
    ((200, {"choices": [{"index": 0, "text": "", "logprobs": None}]}), r"no choices\[0\]\.logprobs\.token_logprobs"),
    ((200, {"object": "list"}), "has no choices"),
    ((500, '{"error": {"message": "engine exploded"}}'), r"HTTP 500: .*engine exploded"),
    ((200, "<html>proxy</html>"), r"did not answer with JSON: <html>proxy"),
], ids=["extra token (BOS)", "null log-prob", "no logprobs", "no choices", "server error", "not JSON"])
def test_unusable_answers_say_what_is_wrong(fake_server, reply, message):
    fake_server.reply = reply
    with pytest.raises(TeacherError, match=message):
        ServerTeacher(fake_server.url, model="m").completion_logps([[1, 2, 3]], [[4, 5]])


# --------------------------------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_server_teacher_equals_local_teacher_on_the_embedded_model(one_torch_thread):
    from llm_dojo.models.loading import load_for_inference

    model, tokenizer = load_for_inference("smollm2-135m-instruct", dtype=torch.float32)
    texts = [("The capital of France is", " Paris, a city on the Seine."), ("2 + 2 =", " 4"),
             ("Once upon a time, in a small village by the sea, there lived", " an old fisherman and his cat.")]
    prompts = [tokenizer(p)["input_ids"] for p, _ in texts]
    completions = [tokenizer(c)["input_ids"] for _, c in texts]
    expected = [plain_logps(model, p, c) for p, c in zip(prompts, completions)]
    engine = HFEngine(model, tokenizer, "smol", stop_ids=[tokenizer.convert_tokens_to_ids("<|im_end|>")])
    try:
        with serve_in_background(create_app(engine)) as url:
            served = ServerTeacher(url).completion_logps(prompts, completions)
    finally:
        engine.close()
    assert_all_close(LocalTeacher(model).completion_logps(prompts, completions), expected)
    assert_all_close(served, expected)
    assert expected[0][0] > -2.0, "' Paris' should be likely after 'The capital of France is'"
