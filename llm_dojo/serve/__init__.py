"""`dojo serve`: an OpenAI-compatible HTTP server. engines.py generates, schema.py parses requests, app.py answers
HTTP, cli.py starts it all."""
