"""Log-likelihood scoring: requests -> token rows -> batches -> one forward each.

Scoring runs one forward pass per distinct token row: requests whose inputs are the same tokens (the
four letter choices of one question) share a row and differ only in the token they read. Rows are
sorted by length (longest first, so an out-of-memory shows up in the first batch), packed into
token-budget batches, right-padded and run without an attention mask (a pad after a token cannot
change it in a causal model), and the LM head is applied only to the positions that are scored.
With `prefix_cache`, a prefix many rows share (the k-shot block) is run once and its KV reused.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import EvalError
from ..progress import progress
from ..types import Loglikelihood, LoglikelihoodRequest
from . import OnDone

log = logging.getLogger(__name__)


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


class Scorer:
    """Log-likelihoods for one loaded model (`hf`: the HFModel that owns tokenizer, weights and settings)."""

    def __init__(self, hf):
        self.hf = hf
        self.tokens = hf.tokens
        self.model = hf.model
        self.decoder = hf.decoder
        self.device = hf.device
        self.batch_size = hf.batch_size
        self.max_length = hf.max_length
        self.pad_id = hf.pad_id
        self.prefix_cache = hf.prefix_cache
        self._cache_arg = hf.cache_arg


    def _rows(self, requests: Sequence[LoglikelihoodRequest]) -> list[Row]:
        rows: dict[tuple[int, ...], Row] = {}
        for i, req in enumerate(requests):
            context_ids, cont_ids = self.tokens.encode_pair(req.context, req.continuation)
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
        results: list[Loglikelihood | None] = [None] * len(requests)
        work = [(n, batch) for n, members in self._groups(self._rows(requests)) for batch in self._batches(members)]
        prefix_cache: dict[tuple[int, ...], tuple] = {}
        bar = progress(len(requests), "loglikelihood", "req", enabled=self.hf.report_progress)
        for n, batch in work:
            prefix = tuple(batch[0].ids[:n])
            if n and prefix not in prefix_cache:
                prefix_cache.clear()  # groups come one after another: keep only the current prefix
                prefix_cache[prefix] = self._run_prefix(list(prefix))
            done = self._score_resilient(batch, requests, n, prefix_cache.get(prefix))
            for i, resp in done:
                results[i] = resp
            if on_done:
                on_done([(requests[i], resp) for i, resp in done])
            bar.update(len(done))
        bar.close()
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

