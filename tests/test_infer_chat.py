"""`dojo chat`: stop tokens, the chat session, one-shot --prompt, and the interactive loop in a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest
import torch

from llm_dojo.infer import chat
from llm_dojo.infer.common import stop_token_ids

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from llm_dojo.models.loading import load_for_inference

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: one thread is much faster than two that wait on each other
    yield load_for_inference(MODEL, dtype=torch.float32)
    torch.set_num_threads(previous)


def test_stop_ids_cover_eos_and_the_templates_end_of_turn(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    assert stop_token_ids(tokenizer, model) == [tokenizer.convert_tokens_to_ids("<|im_end|>")] == [2]


def test_stop_ids_find_a_llama3_style_terminator(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    llama3 = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    llama3.add_special_tokens({"additional_special_tokens": ["<|eot_id|>"]})
    llama3.chat_template = ("{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
                            "{{ m.content }}<|eot_id|>{% endfor %}")
    eot = llama3.convert_tokens_to_ids("<|eot_id|>")
    assert stop_token_ids(llama3) == sorted({llama3.eos_token_id, eot})


def test_session_remembers_turns_and_reset_forgets(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    session = chat.ChatSession(model, tokenizer, max_new_tokens=12)
    pieces = []
    answer = session.reply("What is the capital of France?", on_text=pieces.append)
    assert "Paris" in answer and "".join(pieces) == answer and len(pieces) > 1
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    session.reset()
    assert session.history == []


def test_prompt_prints_only_the_answer(capsys):
    code = chat.main(["--model", MODEL, "--dtype", "fp32", "--prompt", "What is the capital of France?",
                      "--max-new-tokens", "12"])
    captured = capsys.readouterr()
    assert code == 0
    assert "Paris" in captured.out
    assert captured.out.count("\n") == 1 and "Loading" not in captured.out


class Terminal:
    """A child process on a pseudo-terminal; collects what it prints, chunk by chunk."""

    def __init__(self, argv: list[str]):
        self.fd, child_fd = pty.openpty()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TERM": "dumb"}
        self.process = subprocess.Popen(argv, stdin=child_fd, stdout=child_fd, stderr=child_fd, env=env, close_fds=True)
        os.close(child_fd)
        self.output = ""
        self.chunks: list[str] = []

    def read_until(self, marker: str, start: int, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while marker not in self.output[start:]:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {marker!r}; got:\n{self.output[start:]}")
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    break
                self.chunks.append(chunk)
                self.output += chunk
        return self.output[start:]

    def send(self, line: str) -> int:
        start = len(self.output)
        os.write(self.fd, (line + "\n").encode())
        return start

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        os.close(self.fd)


def test_interactive_chat_streams_resets_and_exits():
    terminal = Terminal([sys.executable, "-m", "llm_dojo.cli", "chat", "--model", MODEL, "--temperature", "0",
                         "--max-new-tokens", "12"])
    try:
        terminal.read_until(">>> ", 0)
        chunks_before = len(terminal.chunks)
        start = terminal.send("What is the capital of France?")
        answer = terminal.read_until(">>> ", start)
        assert "Paris" in answer
        assert len(terminal.chunks) - chunks_before > 2, "the answer should arrive token by token"

        start = terminal.send("/reset")
        assert "[conversation reset]" in terminal.read_until(">>> ", start)
        start = terminal.send("/system Answer in French.")
        assert "[system prompt: Answer in French.]" in terminal.read_until(">>> ", start)

        terminal.send("/exit")
        assert terminal.process.wait(timeout=30) == 0
    finally:
        terminal.close()


@pytest.mark.parametrize("ending", [EOFError, KeyboardInterrupt], ids=["ctrl-d", "ctrl-c"])
def test_end_of_input_or_ctrl_c_at_the_prompt_exits_cleanly(model_and_tokenizer, monkeypatch, capsys, ending):
    model, tokenizer = model_and_tokenizer
    session = chat.ChatSession(model, tokenizer, max_new_tokens=4)
    script = iter(["/system Be brief.", "/nonsense", "/system"])

    def scripted_input(prompt: str) -> str:
        try:
            return next(script)
        except StopIteration:
            raise ending from None

    monkeypatch.setattr("builtins.input", scripted_input)
    assert chat.interactive(session) == 0
    err = capsys.readouterr().err
    assert "[system prompt: Be brief.]" in err and "[unknown command /nonsense]" in err
    assert session.system is None and session.history == []
