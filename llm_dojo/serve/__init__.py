"""`dojo serve`: an OpenAI-compatible HTTP server. engines.py (and vllm_engine.py) generate, text.py turns tokens into
text and applies stop strings, logprobs.py measures and shapes log-probs, schema.py parses requests, completions.py
answers the two generating endpoints, app.py answers HTTP, cli.py starts it all."""
