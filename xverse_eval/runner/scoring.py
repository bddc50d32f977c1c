"""Log-likelihood scoring: requests -> token rows -> a prefix tree -> batched passes, each token once.

1. Rows: one forward-pass input per distinct token sequence; requests that read the same tokens (the
   four letter choices of one question) share a row and differ only in the positions/tokens read.
2. Tree (shared-prefix path, the default): rows sorted by token ids; neighbours whose longest common
   prefix is at least MIN_PREFIX tokens form a node holding that prefix (a subject's k-shot block, a RACE
   article), recursively (a question shared by its options) where nesting pays. The tree is built on
   token ids, so every row is computed exactly as if it were scored whole.
3. Passes: a node's segment is computed once; its K/V (per layer, batch 1) is kept while its children
   run, and every child attends to it through the cascade attention of attention.py without a copy.
   Siblings and cousins run together in token-budget batches, right-padded, no mask.
4. Reads: the LM head and log-softmax run only at scored positions, in chunks of bounded memory; a
   position shared by several requests (whole-sequence scoring of a shared article) is computed once.

The plain path (`prefix_cache=False`, `--no-prefix-cache`) runs every row whole, longest first, in
token-budget batches with the model's own attention. Architectures the cascade cannot serve fall back to it (see _shared_ok).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..errors import EvalError
from ..progress import progress
from ..types import Loglikelihood, LoglikelihoodRequest
from . import OnDone
from .attention import SharedPrefix, Unsupported, use_shared_prefix
from .plan import Plan

log = logging.getLogger(__name__)


MIN_PREFIX = 32  # a shared prefix shorter than this is recomputed per row: a pass costs more than it saves
MIN_SAVED = 64  # a nested node must save at least this many token computations ((children - 1) x length)


@dataclass
class Row:
    """One forward-pass input: `ids` plus, per request, the positions read and the tokens scored there.
    `hint` is the requests' shared_prefix text (informational: sharing is found on token ids)."""

    ids: list[int]
    reads: list[tuple[int, list[int], list[int], int]]  # (request index, positions, target ids, context length)
    hint: str = ""


@dataclass(eq=False)
class Node:
    """A segment [start, end) of `ids` computed in one pass, below `parent` (whose K/V it attends).

    Leaves are rows (`row` set; start == end when the row is wholly inside its parent's segment);
    inner nodes are shared prefixes with `children`. `slots` are the (position, target, slot index)
    read inside this segment; `kv` holds the segment's K/V per layer while the children need it."""

    ids: list[int]
    start: int
    end: int
    parent: "Node | None" = None
    children: list["Node"] = field(default_factory=list)
    row: Row | None = None
    slots: list[tuple[int, int, int]] = field(default_factory=list)
    kv: dict | None = None

    @property
    def width(self) -> int:
        return self.end - self.start

    def ancestors(self) -> list["Node"]:
        out, node = [], self.parent
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def build_tree(rows: list[Row], shared: bool) -> list[Node]:
    """Top-level nodes over `rows`. With `shared`, rows sorted by ids are grouped into prefix nodes:
    a run of neighbours whose common prefix beyond the parent's is >= MIN_PREFIX and saves >= MIN_SAVED
    token computations becomes an inner node; otherwise rows are leaves of their parent."""
    if not shared:
        return [Node(r.ids, 0, len(r.ids), row=r) for r in sorted(rows, key=lambda r: -len(r.ids))]
    rows = sorted(rows, key=lambda r: r.ids)
    lcp = [common_prefix_length(rows[k].ids, rows[k + 1].ids) for k in range(len(rows) - 1)]
    return _split(rows, lcp, 0, len(rows), 0, None)


def _split(rows: list[Row], lcp: list[int], lo: int, hi: int, base: int, parent: Node | None) -> list[Node]:
    """Children of `parent` for rows[lo:hi], which share ids[:base]."""
    nodes, k = [], lo
    while k < hi:
        j = k + 1  # extend the run while the neighbours share MIN_PREFIX tokens beyond `base`
        while j < hi and lcp[j - 1] >= base + MIN_PREFIX:
            j += 1
        shared = min(lcp[k : j - 1], default=0)
        if j - k > 1 and (j - k - 1) * (shared - base) >= MIN_SAVED:
            node = Node(rows[k].ids[:shared], base, shared, parent)
            node.children = _split(rows, lcp, k, j, shared, node)
            nodes.append(node)
        else:
            nodes.extend(Node(r.ids, base, len(r.ids), parent, row=r) for r in rows[k:j])
        k = j
    # within one parent, longest first: less padding in a batch, and an out-of-memory shows up early
    nodes.sort(key=lambda n: -n.width)
    return nodes


class Scorer:
    """Log-likelihoods for one loaded model (`hf`: the HFModel that owns tokenizer, weights and settings)."""

    def __init__(self, hf):
        self.hf = hf
        self.tokens = hf.tokens
        self.model = hf.model
        self.decoder = hf.decoder
        self.device = hf.device
        self.pad_id = hf.pad_id
        self.plan = Plan(hf.model, hf.device)

    # settings live on the HFModel, which a caller may change between calls
    prefix_cache = property(lambda self: self.hf.prefix_cache)
    batch_size = property(lambda self: self.hf.batch_size)
    max_length = property(lambda self: self.hf.max_length)

    # ------------------------------------------------------------------ phase 1: rows

    def _rows(self, requests: Sequence[LoglikelihoodRequest]) -> list[Row]:
        rows: dict[tuple[int, ...], Row] = {}
        # every distinct context and context+continuation encoded once, in batches (tokenising one
        # request at a time costs more than the GPU's work on a fast model)
        pairs = [(req.context, req.continuation) for req in requests]
        encoded: list = []
        for start in range(0, len(pairs), 4096):
            chunk = requests[start : start + 4096]
            encoded += self.tokens.encode_pairs(pairs[start : start + 4096], [req.key for req in chunk])
        for i, req in enumerate(requests):
            context_ids, cont_ids = encoded[i]
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
        return list(rows.values())

    # ------------------------------------------------------------------ phase 2: tree and slots

    def _shared_ok(self, rows: list[Row]) -> bool:
        """Can the cascade attention serve this model and these rows? Where not, say why once."""
        if not self.prefix_cache:
            return False
        config = self.model.config
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        reason = None
        if getattr(config, "attn_logit_softcapping", None) is not None:
            reason = "attention logit soft-capping is not in the fused kernels"
        elif getattr(config, "use_bidirectional_attention", False):
            reason = "its attention is bidirectional"
        elif getattr(config, "sliding_window", None) and max(len(r.ids) for r in rows) > config.sliding_window:
            # rows inside the window see every earlier token, as in full causal attention
            reason = f"rows longer than its sliding window of {config.sliding_window} tokens"
        elif getattr(self.hf, "dist", None) is not None and getattr(self.hf.dist, "tensor_parallel", False):
            reason = "tensor parallel runs its own attention"
        if reason:
            log.info("shared-prefix scoring off for %s: %s; scoring each row whole", type(self.model).__name__, reason)
        return reason is None

    @staticmethod
    def _assign_slots(nodes: list[Node]) -> tuple[int, dict[int, list[int]]]:
        """Give every (segment, position, target) read a slot; return the slot count and each request's
        slots in position order. A position read by many requests (a shared article scored as a whole
        sequence) gets one slot."""
        slot_of: dict[tuple[int, int, int], int] = {}
        per_request: dict[int, list[int]] = {}
        stack = list(nodes)
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if node.row is None:
                continue
            path = node.ancestors() + [node]
            for i, positions, targets, _ in node.row.reads:
                at, mine = 0, per_request.setdefault(i, [])
                for p, t in zip(positions, targets):
                    while not (path[at].start <= p < path[at].end):
                        at += 1
                    owner = path[at]
                    key = (id(owner), p, t)
                    if key not in slot_of:
                        slot_of[key] = len(slot_of)
                        owner.slots.append((p, t, slot_of[key]))
                    mine.append(slot_of[key])
        return len(slot_of), per_request

    # ------------------------------------------------------------------ phase 3: passes

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest], on_done: OnDone | None = None) -> list[Loglikelihood]:
        """Responses in request order; `on_done` gets (request, response) pairs after each pass.

        Raises EvalError for a request longer than the model's context or too large for the device."""
        rows = self._rows(requests)
        if not rows:
            return []
        self.plan.check_rows(rows, requests)
        self.stats = {"passes": 0, "tokens": 0, "padded": 0}  # of the last call: real and padded tokens computed
        self._results: list[Loglikelihood | None] = [None] * len(requests)
        self._requests, self._on_done = requests, on_done
        self._bar = progress(len(requests), "loglikelihood", "req", enabled=self.hf.report_progress)
        try:
            shared = self._shared_ok(rows)
            try:
                self._run(rows, shared)
            except Unsupported as exc:
                log.warning("shared-prefix scoring unavailable for %s (%s); scoring the rest row by row", type(self.model).__name__, exc)
                left = [r for r in rows if any(self._results[i] is None for i, *_ in r.reads)]
                self._run(left, False)
        finally:
            self._bar.close()
        return self._results  # type: ignore[return-value]

    def _run(self, rows: list[Row], shared: bool) -> None:
        nodes = build_tree(rows, shared)
        n_slots, self._slots_of = self._assign_slots(nodes)
        self._lp = torch.zeros(n_slots, dtype=torch.float64)
        self._greedy = torch.zeros(n_slots, dtype=torch.bool)
        self._waiting: dict[int, list[int]] = {}  # id(node) -> requests that complete when that node has run
        self._context_len = {}
        for node in self._walk(nodes):
            if node.row is not None:
                self._context_len.update((i, n_context) for i, _, _, n_context in node.row.reads)
                # a row wholly inside its parent completes with the parent's pass
                owner = node if node.width > 0 else node.parent
                self._waiting.setdefault(id(owner), []).extend(i for i, *_ in node.row.reads)
        self._shared = shared
        self._process(nodes)

    @staticmethod
    def _walk(nodes: list[Node]):
        stack = list(nodes)
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            yield node

    def _process(self, members: list[Node]) -> None:
        """Run `members` (nodes whose ancestors' K/V is ready) in batches, each followed by its inner
        nodes' children, depth first, so K/V is held only along the current path."""
        members = [m for m in members if m.width > 0 or m.children]
        if not isinstance(self.batch_size, int):
            # longest first within each parent's run (members under one ancestor stay contiguous), so
            # the planner's padding cuts make passes of similar widths
            runs: dict[int, list[Node]] = {}
            for m in members:
                runs.setdefault(id(m.parent), []).append(m)
            members = [m for run in runs.values() for m in sorted(run, key=lambda n: -n.width)]
        for batch in self.plan.batches(members, self.batch_size):
            self._score_resilient(batch, self._requests)

    def _score_resilient(self, batch: list, requests) -> list[tuple[int, Loglikelihood]]:
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

    def _score(self, batch: list[Node], requests) -> list[tuple[int, Loglikelihood]]:
        """One pass over `batch`, its reads, the requests it completes; then its inner nodes' subtrees."""
        self._forward(batch)
        done = self._complete(batch)
        inner = [node for node in batch if node.children]
        if inner:
            # cousins run together: children of every inner node of this batch, grouped by parent
            self._process([child for node in inner for child in node.children])
            for node in inner:
                node.kv = None  # its subtree is done: free its K/V
        return done

    @torch.inference_mode()
    def _forward(self, batch: list[Node]) -> None:
        width = max(n.width for n in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        for b, node in enumerate(batch):
            ids[b, : node.width] = torch.tensor(node.ids[node.start : node.end])
            positions[b] = torch.arange(node.start, node.start + width)
        ids, positions = ids.to(self.device), positions.to(self.device)
        self.stats["passes"] += 1
        self.stats["tokens"] += sum(n.width for n in batch)
        self.stats["padded"] += ids.numel()
        record = any(n.children for n in batch)
        ancestors = self._ancestor_spans(batch)
        if not self._shared or (not ancestors and not record):
            hidden = self.decoder(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        else:
            state = SharedPrefix(spans=ancestors, record=record)
            with use_shared_prefix(self.model):
                hidden = self.decoder(input_ids=ids, position_ids=positions, use_cache=False, shared_prefix=state).last_hidden_state
            if state.calls != self._n_layers():
                raise Unsupported(f"{state.calls} of {self._n_layers()} attention layers took the shared prefix")
            for b, node in enumerate(batch):
                if node.children:
                    node.kv = {layer: (k[b : b + 1, :, : node.width].clone(), v[b : b + 1, :, : node.width].clone())
                               for layer, (k, v) in state.recorded.items()}
        self._read(batch, hidden)

    def _n_layers(self) -> int:
        config = self.model.config
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        return config.num_hidden_layers

    @staticmethod
    def _ancestor_spans(batch: list[Node]) -> list[tuple[int, int, dict]]:
        """(first member, end member, ancestor) for every ancestor of the batch's members: members are
        grouped by parent, so the members under one ancestor are contiguous."""
        spans: dict[int, list] = {}
        for b, node in enumerate(batch):
            for anc in node.ancestors():
                span = spans.get(id(anc))
                if span is None:
                    spans[id(anc)] = [b, b + 1, anc.kv]
                elif span[1] == b:
                    span[1] = b + 1
                else:
                    raise AssertionError("members under one ancestor must be contiguous in a batch")
        return [tuple(s) for s in spans.values()]

    def _read(self, batch: list[Node], hidden: torch.Tensor) -> None:
        """LM head and log-softmax at this pass's slots, in chunks of bounded memory."""
        width = hidden.shape[1]
        index, targets, slots = [], [], []
        for b, node in enumerate(batch):
            for p, t, s in node.slots:
                index.append(b * width + p - node.start)
                targets.append(t)
                slots.append(s)
        if not index:
            return
        flat = hidden.reshape(-1, hidden.shape[-1])
        lp, greedy = self.read_positions(flat, torch.tensor(index, device=flat.device), torch.tensor(targets, device=flat.device))
        slots_t = torch.tensor(slots)
        self._lp[slots_t] = lp
        self._greedy[slots_t] = greedy

    @torch.inference_mode()
    def read_positions(self, hidden: torch.Tensor, index: torch.Tensor, targets: torch.Tensor, chunk: int | None = None):
        """log P(target) and whether it is the argmax, at rows `index` of `hidden` (N, hidden_size):
        float64 (len(index),) and bool (len(index),) on the CPU. The logits of at most `chunk` positions
        exist at once (default: from Plan.head_chunk, so a 262k vocabulary stays within its budget)."""
        chunk = chunk or self.plan.head_chunk()
        lps, greedies = [], []
        for k in range(0, len(index), chunk):
            logprobs = torch.log_softmax(self._logits(hidden[index[k : k + chunk]]), dim=-1)
            target = targets[k : k + chunk]
            lps.append(logprobs.gather(-1, target[:, None])[:, 0].double().cpu())
            greedies.append((logprobs.argmax(-1) == target).cpu())
            del logprobs
        return torch.cat(lps), torch.cat(greedies)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head, with the output transforms some architectures apply after it."""
        logits = self.model.get_output_embeddings()(hidden).float()
        config = self.model.config
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        if getattr(config, "logit_scale", None):
            logits = logits * config.logit_scale
        cap = getattr(config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    # ------------------------------------------------------------------ phase 4: responses

    def _complete(self, batch: list[Node]) -> list[tuple[int, Loglikelihood]]:
        """Responses of the requests whose last read was in this batch; reported through on_done."""
        done = []
        for node in batch:
            for i in self._waiting.pop(id(node), []):
                if self._results[i] is not None:
                    continue
                req = self._requests[i]
                slots = torch.tensor(self._slots_of[i])
                resp = self._response(req, self._lp[slots], bool(self._greedy[slots].all()), self._context_len[i])
                self._results[i] = resp
                done.append((i, resp))
        if done:
            if self._on_done:
                self._on_done([(self._requests[i], resp) for i, resp in done])
            self._bar.update(len(done))
        return done

    def _response(self, req: LoglikelihoodRequest, token_lp: torch.Tensor, greedy: bool, n_context: int) -> Loglikelihood:
        if not req.whole_sequence:
            return Loglikelihood(float(token_lp.sum()), greedy, len(token_lp))
        # whole sequence: token_lp covers tokens 2..N; split them where the context's tokens end
        context_lp, cont_lp = token_lp[: n_context - 1], token_lp[n_context - 1 :]
        return Loglikelihood(float(cont_lp.sum()), greedy, len(cont_lp), float(context_lp.sum()), n_context)
