"""`dojo serve`: an OpenAI-compatible HTTP server for a model (optionally with an adapter).

    dojo serve --adapter outputs/run [--port 8000] [--api-key KEY] [--max-batch-size 8]

Endpoints: POST /v1/chat/completions (streaming with `"stream": true`), POST /v1/completions (raw prompt, no chat
template), GET /v1/models, GET /health. Any OpenAI client works:

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything")

Backends:
  hf    (default) transformers `generate()` in ONE worker thread fed by a queue. The worker takes the oldest request
        plus every queued request with the same sampling settings (up to --max-batch-size) and generates them as one
        left-padded batch: dynamic batching, but never two model calls at once. Each row stops at its own end-of-turn
        token or max_tokens. The event loop only parses requests and relays tokens, so /health answers during load.
  vllm  vLLM's AsyncLLMEngine (continuous batching, paged attention); needs `pip install vllm` and a CUDA GPU.

Every error is JSON in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with a 4xx status for bad
requests (400 invalid fields or JSON, 401 API key, 404 unknown model or route, 413 body over --max-body-bytes).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from llm_dojo.infer.common import add_model_arguments, load_from_args
from llm_dojo.serve.app import MAX_BODY_BYTES, create_app
from llm_dojo.serve.engines import HFEngine, VLLMEngine, check_vllm_available

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
    model_id = served_name(args)
    engine = build_engine(args, model_id)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        logger.warning("serving on %s without --api-key: anyone who can reach this address can use the model", args.host)
    logger.info("serving %r on http://%s:%d/v1", model_id, args.host, args.port)
    try:
        uvicorn.run(create_app(engine, api_key=args.api_key, max_body_bytes=args.max_body_bytes),
                    host=args.host, port=args.port, log_level="info")
    finally:
        engine.close()
    return 0
