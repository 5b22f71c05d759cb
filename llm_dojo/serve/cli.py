"""`dojo serve`: an OpenAI-compatible HTTP server for a model (optionally with an adapter).

    dojo serve --adapter outputs/run [--port 8000] [--api-key KEY] [--max-batch-size 8]

Endpoints: POST /v1/chat/completions (streaming with `"stream": true`), POST /v1/completions (raw prompt or token
ids, no chat template; `echo` + `logprobs` for lm-evaluation-harness), GET /v1/models, GET /health. Requests may set
seed, stop, logprobs/top_logprobs (chat) or logprobs/echo (completions); other OpenAI parameters that would change
the answer get a 400 `unsupported_parameter`. Any OpenAI client works:

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything")

Backends:
  hf    (default) transformers `generate()` in ONE worker thread fed by a queue. The worker takes the oldest request
        plus every queued request with the same sampling settings (up to --max-batch-size) and generates them as one
        left-padded batch: dynamic batching, but never two model calls at once. Each row stops at its own end-of-turn
        token, stop string or max_tokens; a seeded sampled request runs alone. The event loop only parses requests
        and relays tokens, so /health answers during load.
  vllm  vLLM's AsyncLLMEngine (continuous batching, paged attention); needs `pip install vllm` and a CUDA GPU.

The port is bound before the model loads, so a busy port fails at once (exit code 2), not after the load.

Every error is JSON in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with a 4xx status for bad
requests (400 invalid fields or JSON, 401 API key, 404 unknown model or route, 413 body over --max-body-bytes).
"""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys
from pathlib import Path

from llm_dojo.infer.common import add_model_arguments, load_from_args
from llm_dojo.serve.app import MAX_BODY_BYTES, create_app
from llm_dojo.serve.engines import HFEngine
from llm_dojo.serve.vllm_engine import VLLMEngine, check_vllm_available

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The arguments of `dojo serve`."""
    parser = argparse.ArgumentParser(prog="dojo serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* requests")
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--max-batch-size", type=int, default=8, help="most requests generated together")
    parser.add_argument("--served-model-name", help="the model id clients send (default: adapter or model folder name)")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    return parser


def served_name(args: argparse.Namespace) -> str:
    """The id clients use: --served-model-name, else the adapter's or model's folder name."""
    if args.served_model_name:
        return args.served_model_name
    source = args.adapter or args.model
    return Path(source.rstrip("/")).name or source


def build_engine(args: argparse.Namespace, model_id: str):
    """The engine --backend asks for, fed by the shared loader (tokenizer, chat format's stop ids, base model)."""
    if args.backend == "vllm":
        loaded = load_from_args(args, weights=False)  # vLLM loads the weights itself
        return VLLMEngine(loaded.base, args.adapter, loaded.tokenizer, model_id, stop_ids=loaded.stop_ids,
                          max_batch_size=args.max_batch_size, dtype=args.dtype, load_in_4bit=loaded.load_in_4bit,
                          trust_remote_code=args.trust_remote_code)
    loaded = load_from_args(args)
    return HFEngine(loaded.model, loaded.tokenizer, model_id, stop_ids=loaded.stop_ids,
                    max_batch_size=args.max_batch_size)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port and listening, for uvicorn to serve on (OSError when the port is taken)."""
    family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a recent exit's TIME_WAIT is fine
        sock.bind(address)
        # Listening now, not when uvicorn starts: a second `dojo serve` on this port fails at once instead of after
        # its model load, and clients that connect during the load wait in the backlog.
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str]) -> int:
    """Entry point of `dojo serve`."""
    import uvicorn

    args = build_parser().parse_args(argv)
    if args.model is None and args.adapter is None:
        raise SystemExit("dojo serve: give --model, --adapter, or both")
    if args.backend == "vllm":
        try:
            check_vllm_available()  # before loading anything: a missing GPU should cost a second, not a model load
        except RuntimeError as error:
            print(f"dojo serve: error: {error}", file=sys.stderr)
            return 2
    try:
        sock = listening_socket(args.host, args.port)  # before the model: a busy port should not cost a model load
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            print(f"dojo serve: error: port {args.port} on {args.host} is already in use (another dojo serve?); "
                  f"choose another with --port", file=sys.stderr)
        else:
            print(f"dojo serve: error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 2
    with sock:
        model_id = served_name(args)
        engine = build_engine(args, model_id)
        if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
            logger.warning("serving on %s without --api-key: anyone who can reach this address can use the model",
                           args.host)
        logger.info("serving %r on http://%s:%d/v1", model_id, args.host, args.port)
        app = create_app(engine, api_key=args.api_key, max_body_bytes=args.max_body_bytes)
        try:
            uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
        finally:
            engine.close()
    return 0
