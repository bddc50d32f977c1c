"""Log-likelihood scoring: requests -> token rows -> a prefix tree -> packed passes, each token once.

1. Rows (`rows_of`): one forward-pass input per distinct token sequence; requests that read the same
   tokens (the four letter choices of one question) share a row and differ only in the positions and
   tokens read. Texts are tokenised in batches and through the Tokens id cache, so a prompt counted
   while building requests is not tokenised again.
2. Tree (`build_tree`, the shared-prefix path, the default): rows sorted by ids; neighbours whose
   longest common prefix is at least MIN_PREFIX tokens form a node holding that prefix (a subject's
   k-shot block, a RACE article), recursively (a question shared by its options) where nesting pays.
   The tree is built on token ids, so every row is computed exactly as if it were scored whole. It is
   the one decision of what is shared: `scoring_work` counts the same tree without a model.
3. Passes: a node's segment is computed once and its K/V (per layer) kept while its children run.
   A pass packs the segments of many nodes end to end, with no padding: siblings and cousins of
   different prefixes together (the questions of many RACE articles), each attending its own ancestors'
   K/V through the varlen cascade attention of attention.py.
4. Reads: the LM head and log-softmax run only at scored positions, in chunks of bounded memory; a
   position shared by several requests (whole-sequence scoring of a shared article) is computed once.

The plain path (`prefix_cache=False`, `--no-prefix-cache`) runs every row whole, longest first, in
right-padded token-budget batches with the model's own attention: the reference the shared path is
tested against. Architectures the packed attention cannot serve fall back to it (`Scorer._shared_ok`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..errors import EvalError
from ..progress import progress
from ..types import Loglikelihood, LoglikelihoodRequest
from . import OnDone, Work
from .attention import Level, Packed, Unsupported, use_packed
from .load import spans_devices
from .plan import Plan
from .state import Loaded, Settings
from .tokens import Tokens

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
        """Tokens this node's pass computes: its own segment."""
        return self.end - self.start

    def ancestors(self) -> list["Node"]:
        """The inner nodes above this one, outermost first."""
        out, node = [], self.parent
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids `a` and `b` share."""
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


def tree_tokens(nodes: list[Node]) -> int:
    """Tokens the passes over `nodes` compute: every node's own segment, once."""
    total, stack = 0, list(nodes)
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        total += node.width
    return total


def rows_of(requests: Sequence[LoglikelihoodRequest], tokens: Tokens, max_length: int) -> list[Row]:
    """Phase 1: the distinct token rows of `requests` (see Row). Every distinct context and
    context+continuation is encoded once, in batches. Raises EvalError (naming the request) for a
    continuation that adds no token or holds a special token, or a row longer than `max_length`."""
    rows: dict[tuple[int, ...], Row] = {}
    encoded = tokens.encode_pairs([(req.context, req.continuation) for req in requests], [req.key for req in requests])
    for i, req in enumerate(requests):
        context_ids, cont_ids = encoded[i]
        if not cont_ids:
            raise EvalError(f"request {req.key}: the continuation {req.continuation!r} adds no token")
        whole = context_ids + cont_ids
        if len(whole) - 1 > max_length:
            raise EvalError(f"request {req.key}: {len(whole)} tokens exceed the model's context of {max_length}")
        ids = whole[:-1]
        if req.whole_sequence:
            positions, targets = list(range(len(whole) - 1)), whole[1:]
        else:
            positions, targets = list(range(len(context_ids) - 1, len(whole) - 1)), cont_ids
        row = rows.setdefault(tuple(ids), Row(ids, [], req.shared_prefix))
        row.reads.append((i, positions, targets, len(context_ids)))
    return list(rows.values())


def scoring_work(requests: Sequence[LoglikelihoodRequest], tokens: Tokens, prefix_cache: bool = True, max_length: int = 1 << 30) -> Work:
    """The Work of scoring `requests` from the tokenizer alone: the rows and the tree the Scorer
    builds (`computed_tokens` equals the Scorer's counted tokens for the same call on a model the
    packed attention serves)."""
    if not requests:
        return Work()
    rows = rows_of(requests, tokens, max_length)
    return Work(len(requests), sum(len(r.ids) for r in rows), tree_tokens(build_tree(rows, prefix_cache)))


class Scorer:
    """Log-likelihoods for one loaded model (`loaded`: tokenizer, weights, device; runner/hf.py).

    Per-call state (the settings, the requests, the tree, the slots' results) lives on the scorer for
    the duration of one `loglikelihood` call. `counters` accumulates the Work of every call:
    requests, distinct tokens, computed tokens (after prefix sharing) and padded tokens."""

    def __init__(self, loaded: "Loaded"):
        self.loaded = loaded
        self.tokens = loaded.tokens
        self.model = loaded.model
        self.decoder = loaded.decoder
        self.config = loaded.config
        self.device = loaded.device
        self.pad_id = loaded.pad_id
        self.plan = Plan(loaded.model, loaded.device)
        self.counters = Work()
        self.stats = {"passes": 0, "tokens": 0, "padded": 0}  # of the last call: passes, real and padded tokens computed
        self.max_length = 1 << 30
        self.batch_size: str | int = "auto"

    # ------------------------------------------------------------------ phase 1: rows

    def _rows(self, requests: Sequence[LoglikelihoodRequest]) -> list[Row]:
        return rows_of(requests, self.tokens, self.max_length)

    # ------------------------------------------------------------------ phase 2: tree and slots

    def _shared_ok(self, rows: list[Row], prefix_cache: bool) -> bool:
        """Can the packed attention serve this model and these rows? Where not, say why once."""
        if not prefix_cache:
            return False
        config = self.config
        reason = None
        if getattr(config, "attn_logit_softcapping", None) is not None:
            reason = "attention logit soft-capping is not in the fused kernels"
        elif getattr(config, "use_bidirectional_attention", False):
            reason = "its attention is bidirectional"
        elif getattr(config, "sliding_window", None) and max(len(r.ids) for r in rows) > config.sliding_window:
            # rows inside the window see every earlier token, as in full causal attention
            reason = f"rows longer than its sliding window of {config.sliding_window} tokens"
        elif spans_devices(self.model):
            reason = "it is split over devices (a device map): the packed pass keeps its state on one device"
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

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest], on_done: OnDone | None = None, settings: "Settings | None" = None) -> list[Loglikelihood]:
        """Responses in request order (see Model.loglikelihood); `on_done` gets (request, response)
        pairs after each pass. `settings`: this call's batch size, prefix cache, context limit and
        progress (runner/hf.py: Settings; default: its defaults with no context limit).

        Raises EvalError for a request longer than the context or too large for the device."""
        settings = settings or Settings(max_length=1 << 30)
        self.max_length, self.batch_size = settings.max_length, settings.batch_size
        rows = self._rows(requests)
        if not rows:
            return []
        self.plan.check_rows(rows, requests)
        self.stats = {"passes": 0, "tokens": 0, "padded": 0}
        self._results: list[Loglikelihood | None] = [None] * len(requests)
        self._requests, self._on_done = requests, on_done
        self._bar = progress(len(requests), "loglikelihood", "req", enabled=settings.report_progress)
        try:
            shared = self._shared_ok(rows, settings.prefix_cache)
            try:
                self._run(rows, shared)
            except Unsupported as exc:
                log.warning("shared-prefix scoring unavailable for %s (%s); scoring the rest row by row", type(self.model).__name__, exc)
                left = [r for r in rows if any(self._results[i] is None for i, *_ in r.reads)]
                self._run(left, False)
        finally:
            self._bar.close()
        self.counters = self.counters + Work(len(requests), sum(len(r.ids) for r in rows), self.stats["tokens"], 0,
                                             self.stats["padded"] - self.stats["tokens"])
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
        """Run `members` (nodes whose ancestors' K/V is ready) in passes, each followed by its inner
        nodes' children, depth first, so K/V is held only along the current path."""
        members = [m for m in members if m.width > 0 or m.children]
        if not isinstance(self.batch_size, int):
            # longest first within each parent's run (members under one ancestor stay contiguous): on
            # the plain path the planner's padding cuts then make passes of similar widths
            runs: dict[int, list[Node]] = {}
            for m in members:
                runs.setdefault(id(m.parent), []).append(m)
            members = [m for run in runs.values() for m in sorted(run, key=lambda n: -n.width)]
        for batch in self.plan.batches(members, self.batch_size, packed=self._shared):
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
        if self._shared:
            self._forward_packed(batch)
        else:
            self._forward_padded(batch)
        done = self._complete(batch)
        inner = [node for node in batch if node.children]
        if inner:
            # cousins run together: children of every inner node of this batch, grouped by parent
            self._process([child for node in inner for child in node.children])
            for node in inner:
                node.kv = None  # its subtree is done: free its K/V
        return done

    @torch.inference_mode()
    def _forward_padded(self, batch: list[Node]) -> None:
        """The plain path's pass: whole rows, right-padded, the model's own attention (no mask needed:
        padding comes after every real token)."""
        width = max(n.width for n in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        for b, node in enumerate(batch):
            ids[b, : node.width] = torch.tensor(node.ids[node.start : node.end])
        positions = torch.arange(width)[None].expand(len(batch), width)
        ids, positions = ids.to(self.device), positions.to(self.device)
        self._count(batch, ids.numel())
        hidden = self.decoder(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        self._read(batch, hidden.reshape(-1, hidden.shape[-1]), [b * width for b in range(len(batch))])

    @torch.inference_mode()
    def _forward_packed(self, batch: list[Node]) -> None:
        """The shared path's pass: the batch's segments packed into one sequence, each at its own
        positions, every segment attending its ancestors' K/V (attention.py); inner nodes' K/V kept."""
        offsets = [0]
        for node in batch:
            offsets.append(offsets[-1] + node.width)
        ids = torch.tensor([t for node in batch for t in node.ids[node.start : node.end]], dtype=torch.long)
        positions = torch.cat([torch.arange(node.start, node.end) for node in batch])
        ids, positions = ids.to(self.device)[None], positions.to(self.device)[None]
        self._count(batch, offsets[-1])
        state = Packed(torch.tensor(offsets, dtype=torch.int32, device=self.device), max(n.width for n in batch),
                       self._levels(batch, offsets), record=any(n.children for n in batch),
                       longest_view=max(n.end for n in batch))
        with use_packed(self.model):
            hidden = self.decoder(input_ids=ids, position_ids=positions, use_cache=False, shared_prefix=state).last_hidden_state
        if state.calls != self.config.num_hidden_layers:
            raise Unsupported(f"{state.calls} of {self.config.num_hidden_layers} attention layers took the shared prefix")
        for node, start in zip(batch, offsets):
            if node.children:  # (n, kv_heads, head_dim) per layer: what Level.keys packs
                node.kv = {layer: (k[start : start + node.width].clone(), v[start : start + node.width].clone())
                           for layer, (k, v) in state.recorded.items()}
        self._read(batch, hidden[0], offsets)

    def _levels(self, batch: list[Node], offsets: list[int]) -> list[Level]:
        """Per depth of the tree, the ancestors of the batch's members with the packed token count
        below each. A pass holds nodes of one depth (the top nodes, then the children of a pass's
        inner nodes), and members under one ancestor are contiguous (the tree's order), so at every
        depth the ancestors' query ranges tile the pass in order."""
        depth_groups: list[list[list]] = []  # depth -> [[ancestor, tokens below it]]
        for node in batch:
            chain = node.ancestors()
            if batch and len(chain) != len(batch[0].ancestors()):
                raise AssertionError("a packed pass holds nodes of one depth")
            for depth, anc in enumerate(chain):
                if len(depth_groups) <= depth:
                    depth_groups.append([])
                groups = depth_groups[depth]
                if groups and groups[-1][0] is anc:
                    groups[-1][1] += node.width
                elif any(g[0] is anc for g in groups):
                    raise AssertionError("members under one ancestor must be contiguous in a batch")
                else:
                    groups.append([anc, node.width])
        levels = []
        for groups in depth_groups:
            counts, lengths = [n for _, n in groups], [anc.width for anc, _ in groups]
            levels.append(Level(self._cumulative(counts), max(counts), [anc.kv for anc, _ in groups], self._cumulative(lengths), max(lengths)))
        return levels

    def _cumulative(self, counts: list[int]) -> torch.Tensor:
        out = [0]
        for n in counts:
            out.append(out[-1] + n)
        return torch.tensor(out, dtype=torch.int32, device=self.device)

    def _count(self, batch: list[Node], computed: int) -> None:
        self.stats["passes"] += 1
        self.stats["tokens"] += sum(n.width for n in batch)
        self.stats["padded"] += computed

    def _read(self, batch: list[Node], flat: torch.Tensor, offsets: list[int]) -> None:
        """LM head and log-softmax at this pass's slots (`flat`: the pass's hidden states, one row per
        token; member b's segment starts at flat row offsets[b]), in chunks of bounded memory."""
        index, targets, slots = [], [], []
        for node, start in zip(batch, offsets):
            for p, t, s in node.slots:
                index.append(start + p - node.start)
                targets.append(t)
                slots.append(s)
        if not index:
            return
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
            lps.append(logprobs.gather(-1, target[:, None])[:, 0])
            greedies.append(logprobs.argmax(-1) == target)
            del logprobs
        # one copy to the host per pass (a copy per chunk would wait for the device each time)
        return torch.cat(lps).double().cpu(), torch.cat(greedies).cpu()

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head, with the output transforms some architectures apply after it."""
        logits = self.model.get_output_embeddings()(hidden).float().to(hidden.device)  # a device map may hold the head elsewhere
        if getattr(self.config, "logit_scale", None):
            logits = logits * self.config.logit_scale
        cap = getattr(self.config, "final_logit_softcapping", None)
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
