"""LLM tricks, one folder each: the idea in a README, a from-scratch PyTorch version, tests against the reference.

- `lora`      — LoRA and rsLoRA (`LoRALinear`)
- `dora`      — DoRA (`DoRALinear`)
- `lora_plus` — LoRA+ optimizer parameter groups
- `pissa`     — PiSSA initialisation from the top singular vectors
- `neftune`   — NEFTune noisy embeddings, per-sample length aware
- `inject`    — put our layers into a transformers model, merge them, save them in PEFT's format
"""
