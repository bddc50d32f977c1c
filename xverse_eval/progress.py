"""Progress of a long phase: a tqdm bar on a terminal, plain periodic lines elsewhere (CI, nohup, `| tee`).

    with progress(total=len(requests), desc="loglikelihood", unit="req") as bar:
        ...
        bar.update(len(batch))

On a terminal this is tqdm. When stderr is not a terminal, a line

    loglikelihood: 1200/5000 req (24%), 310.2 req/s, ETA 12s

goes to stderr at most every `XVERSE_EVAL_PROGRESS_EVERY`
seconds (default 10), plus one when the phase ends, so a log shows that work goes on and how fast.
Under torchrun only rank 0 reports, counting the whole job (see parallel.py).
"""
from __future__ import annotations

import os
import sys
import time


def _interval() -> float:
    try:
        return float(os.environ.get("XVERSE_EVAL_PROGRESS_EVERY", "10"))
    except ValueError:
        return 10.0


def _eta(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _emit(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class LineProgress:
    """Periodic one-line progress reports for logs; the same `update`/`close` as a tqdm bar."""

    def __init__(self, total: int, desc: str, unit: str, interval: float | None = None, clock=time.monotonic):
        self.total, self.desc, self.unit = total, desc, unit
        self.interval = _interval() if interval is None else interval
        self.clock = clock
        self.start = self.last = clock()
        self.n = 0
        self.closed = False

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.n / elapsed
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = f", ETA {_eta((self.total - self.n) / rate)}" if rate > 0 and self.total and self.n < self.total else ""
        return f"{self.desc}: {self.n}/{self.total} {self.unit}{pct}, {rate:.1f} {self.unit}/s{eta}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            _emit(self.line())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _emit(self.line() + f", done in {_eta(self.clock() - self.start)}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def progress(total: int, desc: str, unit: str = "req", enabled: bool = True):
    """A progress reporter for `total` units of work: tqdm on a terminal, `LineProgress` otherwise,
    nothing when `enabled` is false (a non-zero rank under torchrun)."""
    if not enabled:
        return _Silent()
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit)
    return LineProgress(total, desc, unit)
