"""Use a fine-tuned model: `dojo chat` (chat.py), `dojo generate` (generate.py), `dojo merge` (merge.py) and
`dojo serve` (the llm_dojo.serve package). Prompt building, stop tokens and sampling settings they share live in common.py."""
