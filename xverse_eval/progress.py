"""Progress of a long phase: a tqdm bar on a terminal, plain periodic lines elsewhere (CI, nohup, `| tee`).

    with progress(total=len(requests), desc="loglikelihood", unit="req") as bar:
        ...
        bar.update(len(batch))

On a terminal this is tqdm. When stderr is not a terminal, a line

    loglikelihood: 1200/5000 req (24%), 310.2 req/s, 3s elapsed, ETA 12s

goes to stderr every `XVERSE_EVAL_PROGRESS_EVERY` seconds (default 10; 0 turns the periodic lines
off), plus one when the phase ends. The lines come from a heartbeat thread as well as from
`update`, so a batch that takes minutes (16 generations of 512 tokens on a CPU) still shows the
run is alive. Under torchrun only rank 0 reports, counting the whole job (see parallel.py).
"""
from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from typing import Callable

ENV_VAR = "XVERSE_EVAL_PROGRESS_EVERY"
DEFAULT_EVERY = 10.0


def _interval() -> float:
    """Seconds between lines, from $XVERSE_EVAL_PROGRESS_EVERY; a bad value gets the default."""
    try:
        value = float(os.environ.get(ENV_VAR, DEFAULT_EVERY))
    except ValueError:
        return DEFAULT_EVERY
    return value if value >= 0 else DEFAULT_EVERY


def duration(seconds: float) -> str:
    """`42s`, `3m07s`, `2h05m`: short enough for a log line."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _rate(per_second: float, unit: str) -> str:
    """`310.2 req/s`; below 0.1/s per minute (`2.4 req/min`), so a slow generation is not `0.0 req/s`."""
    if per_second == 0 or per_second >= 0.1:
        return f"{per_second:.1f} {unit}/s"
    return f"{per_second * 60:.1f} {unit}/min"


def _emit(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class LineProgress:
    """Periodic one-line progress reports for logs; the same `update`/`close` as a tqdm bar.

    `interval` seconds between lines (None: from the environment; 0: only the final line).
    `clock` gives seconds (a fake one in tests). `heartbeat=True` starts a daemon thread that
    emits a line when `interval` has passed without one, so slow batches are not silent.
    """

    def __init__(self, total: int, desc: str, unit: str, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic, emit: Callable[[str], None] = _emit, heartbeat: bool = False,
                 brief: bool = False):
        self.total, self.desc, self.unit = total, desc, unit
        self.brief = brief  # no closing line for a phase that ended within one interval (and printed none)
        self.printed = False
        self.interval = _interval() if interval is None else interval
        self.clock, self.emit = clock, emit
        self.start = self.last = clock()
        self.n = 0
        self.closed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if heartbeat and self.interval > 0:
            # the thread holds a weak reference only: a phase that ends in an exception without
            # close() stops beating once its reporter is garbage (no lines after the error)
            self._thread = threading.Thread(target=_beat, args=(weakref.ref(self), self._stop, max(self.interval / 4, 0.05)),
                                            name=f"progress:{desc}", daemon=True)
            self._thread.start()

    def line(self) -> str:
        """`desc: n/total unit (pct), rate unit/s, elapsed, ETA` (ETA once a rate is known)."""
        elapsed = self.clock() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = f", ETA {duration((self.total - self.n) / rate)}" if rate > 0 and self.n < self.total else ""
        return f"{self.desc}: {self.n}/{self.total} {self.unit}{pct}, {_rate(rate, self.unit)}, {duration(elapsed)} elapsed{eta}"

    def tick(self) -> None:
        """Emit a line if `interval` seconds have passed since the last one."""
        with self._lock:
            now = self.clock()
            if self.closed or not self.interval or now - self.last < self.interval:
                return
            self.last = now
            self.printed = True
            text = self.line()
        self.emit(text)

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
        self.tick()

    def close(self, failed: bool = False) -> None:
        """The final line, once; nothing for a phase that had no work, that `failed` (its error is
        the line that matters), or a `brief` one that ended within one interval without a line."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            short = self.brief and not self.printed and self.clock() - self.start < self.interval
            text = None if failed or short or (not self.total and not self.n) else f"{self.line()}, done"
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if text:
            self.emit(text)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(failed=exc_type is not None)


def _beat(ref: "weakref.ref[LineProgress]", stop: threading.Event, every: float) -> None:
    """Heartbeat: `tick` every `every` seconds (a line is at most that late) until closed or gone."""
    while not stop.wait(every):
        bar = ref()
        if bar is None:
            return
        bar.tick()
        del bar


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def progress(total: int, desc: str, unit: str = "req", enabled: bool = True, brief: bool = False):
    """A progress reporter for `total` units of work: tqdm on a terminal, `LineProgress` (with its
    heartbeat) otherwise, nothing when `enabled` is false (a non-zero rank under torchrun).
    `brief`: a phase that ends within one interval prints nothing at all (the pipeline's short
    phases -- load data, build, score -- so a small run's output, or an error after them, stays one
    line); a longer one reports like any other."""
    if not enabled:
        return _Silent()
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=not brief)
    return LineProgress(total, desc, unit, heartbeat=True, brief=brief)
