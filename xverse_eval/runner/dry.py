"""A weightless Model: a model's tokenizer and config, no weights (`xverse-eval run --dry-run`, and the
tokenizer the pipeline builds requests with while the weights load).

`DryModel.load(spec, ...)` reads what building requests needs -- the tokenizer, seen through
runner/tokens.py exactly as the transformers backend sees it (so prompts, shot dropping and token
counts are the ones a real run gets), the context length, and the architecture's `Shape` (for the
compute floor) -- from a local folder, a .gguf file (its converted copy where there is one), a hub id,
or a `random:ARCH` spec (runner/xverse.py: the architecture's config and `tokenizer=DIR`). A `fake:`
spec is its own dry model (runner/fake.py loads no weights). `loglikelihood` and `generate` refuse:
nothing here can compute a response.

Peak dense bf16 throughput per device (`peak_tflops`) turns a FLOP count into a compute floor
(FLOPs / peak, the time a run cannot beat) and a run's achieved rate into MFU.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import EvalError
from . import Work
from .tokens import CountsTokens

# dense bf16 tensor-core peak, TFLOP/s, no sparsity (vendor datasheets); matched against the device
# name torch reports, first match wins (so "H100 PCIe" is tried before "H100")
PEAK_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("H20", 148.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("RTX 4090", 165.0),
    ("V100", 125.0),
]
PEAK_ENV = "XVERSE_EVAL_PEAK_TFLOPS"


def peak_tflops(device_name: str | None, override: float | None = None) -> float | None:
    """Peak dense bf16 TFLOP/s of `device_name` (e.g. "NVIDIA H200"): `override` (--peak-tflops),
    else $XVERSE_EVAL_PEAK_TFLOPS, else the table; None when unknown (a CPU). Raises EvalError for a
    non-positive or non-numeric override."""
    raw = override if override is not None else os.environ.get(PEAK_ENV)
    if raw is not None and raw != "":
        try:
            value = float(raw)
        except ValueError:
            raise EvalError(f"${PEAK_ENV}={raw!r}: not a number of TFLOP/s") from None
        if value <= 0:
            raise EvalError(f"peak TFLOP/s must be positive, got {raw}")
        return value
    if not device_name:
        return None
    for pattern, value in PEAK_TFLOPS:
        if re.search(rf"\b{re.escape(pattern)}\b", device_name):
            return value
    return None


def device_name(device: str | None) -> str | None:
    """The accelerator's name for `device` ("NVIDIA H200"), or None for a CPU (or no torch CUDA)."""
    if device is not None and not str(device).startswith("cuda"):
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_name(torch.device(device or "cuda"))
    except Exception:  # noqa: BLE001 -- a name is only for the compute-floor line
        return None


@dataclass
class DryModel(CountsTokens):
    """The Model contract without weights: `name`, `fingerprint` (None where only loading the weights
    knows it: random ones), `max_length`, `tokenizer`, `tokens` (runner.tokens.Tokens), `shape`
    (runner.shape.Shape, or None where the config cannot be read without the weights)."""

    name: str
    tokenizer: Any
    tokens: Any
    max_length: int
    shape: Any
    fingerprint: dict | None = None
    stop_ids: frozenset = frozenset()

    @classmethod
    def load(cls, spec: str, device: str | None = None, dtype: str = "auto", revision: str | None = None,
             model_args: dict | None = None, trust_remote_code: bool = False, **_ignored) -> Any:
        """The dry model of `spec` (see the module docstring); a `fake:` spec returns the FakeModel.
        Raises EvalError for a bad spec, a missing tokenizer, or a config without layers/widths."""
        if spec.startswith("fake:"):
            from .fake import FakeModel

            return FakeModel.load(spec)
        if spec.startswith("random:"):
            return cls._random(spec)
        from .load import context_length, identify, load_tokenizer
        from .shape import Shape
        from .tokens import Tokens

        source, _, fingerprint = identify(spec, device, dtype, revision, model_args, trust_remote_code)
        kwargs = {**fingerprint["model_args"], "revision": fingerprint["revision"], "trust_remote_code": fingerprint["trust_remote_code"]}
        tokenizer = load_tokenizer(source, **kwargs)
        config = _config(spec, source, kwargs)
        max_length = context_length(config) if config is not None else 2048
        return cls(spec, tokenizer, Tokens(tokenizer), max_length, Shape.of(config) if config is not None else None, fingerprint)

    @classmethod
    def _random(cls, spec: str) -> "DryModel":
        from transformers import AutoTokenizer

        from .load import context_length
        from .shape import Shape
        from .tokens import Tokens
        from .xverse import parse_spec, random_config

        _, _, _, tokenizer_dir = parse_spec(spec)
        if not tokenizer_dir:
            raise EvalError(f"--model {spec!r} needs a tokenizer: add :tokenizer=DIR or set XVERSE_EVAL_RANDOM_TOKENIZER")
        if not os.path.isdir(tokenizer_dir):
            raise EvalError(f"--model {spec!r}: tokenizer folder does not exist: {tokenizer_dir}")
        config = random_config(spec)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        return cls(spec, tokenizer, Tokens(tokenizer), context_length(config), Shape.of(config), None)

    # -- the contract

    def loglikelihood(self, requests, on_done=None):
        """Refused: a dry model has no weights."""
        raise EvalError(f"{self.name}: a dry run has no weights to score with")

    def generate(self, requests, on_done=None):
        """Refused: a dry model has no weights."""
        raise EvalError(f"{self.name}: a dry run has no weights to generate with")

    def counters(self) -> Work:
        """Nothing computed."""
        return Work()


def _config(spec: str, source, kwargs: dict):
    """The model's config without weights: config.json (XVERSE's mapped onto Llama), a GGUF file's
    header, or the hub's config.json; None where none can be read."""
    from .load import config_before_loading

    config = config_before_loading(spec)
    if config is not None:
        return config
    from transformers import AutoConfig

    try:
        if source.gguf_file:
            converted = _converted_gguf_folder(source)  # reading the GGUF header itself takes seconds
            if converted is not None:
                return AutoConfig.from_pretrained(converted)
            return AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file)
        return AutoConfig.from_pretrained(source.path, **{k: v for k, v in kwargs.items() if k in ("revision", "subfolder", "trust_remote_code")})
    except Exception:  # noqa: BLE001 -- without a config the dry run prints no compute floor, nothing else changes
        return None


def _converted_gguf_folder(source):
    """The folder of a .gguf file's converted copy (runner/load.py: gguf_cache_dir), or None."""
    from pathlib import Path

    import transformers

    from .fingerprint import file_sha256
    from .load import gguf_cache_dir

    sha = file_sha256(Path(source.path, source.gguf_file))
    for folder in sorted(gguf_cache_dir(sha, "float32").parent.glob(f"*-transformers{transformers.__version__}")):
        if (folder / "config.json").is_file():
            return folder
    return None


# ----------------------------------------------------------------------------- the dry run's table

REFERENCE_DEVICE = ("NVIDIA H200", 989.0)  # the floor shown when the device's peak is unknown (a CPU)


def cost_table(config, model, tasks, built: dict, started: float) -> str:
    """The dry run's report: per task the requests, distinct tokens, tokens after prefix sharing,
    generated tokens (an upper bound: every max_new_tokens) and, for a model whose shape is known,
    the matmul FLOPs of those tokens and the compute floor (FLOPs / the device's peak: the time no
    run can beat on one device). The peak is `config.peak_tflops`, $XVERSE_EVAL_PEAK_TFLOPS or the
    device table; on a device not in it (a CPU) the floor is shown for an H200. `started`: the
    run's time.monotonic() at its start (the last line says how long the dry run took)."""
    from . import work

    tokens = getattr(model, "tokens", None)
    shape = getattr(model, "shape", None)
    peak = peak_tflops(device_name(config.device), config.peak_tflops)
    where = device_name(config.device) or ("the given peak" if peak else REFERENCE_DEVICE[0])
    peak = peak or REFERENCE_DEVICE[1]
    rows = [["task", "requests", "distinct tokens", "after prefix sharing", "generated (max)", "TFLOP", "floor"]]
    total = Work()
    from ..progress import progress

    with progress(len(tasks), "tokenise", "task", brief=True) as bar:  # rows and prefix trees, as the scorer makes them
        for task in tasks:
            requests = [r for item in built[task.name] for r in item.requests]
            w = work(requests, tokens, config.prefix_cache) if tokens is not None else Work(requests=len(requests))
            total = total + w
            rows.append([task.name, *_figures(w, shape, peak)])
            bar.update(1)
    rows.append(["total", *_figures(total, shape, peak)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.append("")
    if tokens is None:
        lines.append(f"{model.name}: no tokenizer, so no token counts")
    elif shape is None:
        lines.append(f"{model.name}: its config gives no shape, so no FLOPs or floor")
    else:
        lines.append(f"{model.name}: {shape.params / 1e9:.2f} B parameters, {shape.layers} layers; "
                     f"floor = matmul FLOPs (2 x parameters per token, attention not counted) / {peak:g} TFLOP/s "
                     f"(dense bf16 peak of {where}; set ${PEAK_ENV} for another)")
    import time

    lines.append(f"dry run: {total.requests:,} requests built and tokenised in {time.monotonic() - started:.1f} s")
    return "\n".join(lines)


def _figures(w: Work, shape, peak: float) -> list[str]:
    cells = [f"{w.requests:,}", f"{w.distinct_tokens:,}", f"{w.computed_tokens:,}", f"{w.generated_tokens:,}"]
    if shape is None or not w.requests:
        return cells + ["-", "-"]
    flops = shape.flops_per_token(0) * (w.computed_tokens + w.generated_tokens)
    return cells + [f"{flops / 1e12:,.1f}", _seconds(flops / (peak * 1e12))]


def _seconds(s: float) -> str:
    from ..progress import duration

    return f"{s:.1f}s" if s < 60 else duration(s)
