"""`dojo serve` claims its port before it loads the model: a busy port is a clear error in a second, exit code 2."""

from __future__ import annotations

import socket

import pytest
import uvicorn

from llm_dojo.serve import cli


@pytest.fixture
def busy_port():
    """A port on 127.0.0.1 that another server is listening on."""
    other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    other.bind(("127.0.0.1", 0))
    other.listen(1)
    yield other.getsockname()[1]
    other.close()


def never_load(*args, **kwargs):
    raise AssertionError("the model was loaded although the port is busy")


def test_busy_port_exits_2_before_the_model_loads(busy_port, monkeypatch, capsys):
    monkeypatch.setattr(cli, "build_engine", never_load)
    code = cli.main(["--model", "smollm2-135m-instruct", "--port", str(busy_port)])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"dojo serve: error: port {busy_port} on 127.0.0.1 is already in use (another dojo serve?); "
        f"choose another with --port")


class FakeEngine:
    closed = False

    def close(self):
        self.closed = True


def test_free_port_is_held_from_before_the_load_and_handed_to_uvicorn(monkeypatch):
    with socket.socket() as probe:  # a port that is free right now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine, served = FakeEngine(), {}

    def build_engine(args, model_id):
        # while the model "loads", the port is already taken: a second server would fail at once
        with socket.socket() as second, pytest.raises(OSError):
            second.bind(("127.0.0.1", port))
        return engine

    def run(server, sockets=None):
        served["address"] = sockets[0].getsockname()

    monkeypatch.setattr(cli, "build_engine", build_engine)
    monkeypatch.setattr(uvicorn.Server, "run", run)
    assert cli.main(["--model", "smollm2-135m-instruct", "--port", str(port)]) == 0
    assert served["address"] == ("127.0.0.1", port)
    assert engine.closed
    with socket.socket() as again:  # released on exit
        again.bind(("127.0.0.1", port))
