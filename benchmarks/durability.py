"""Per-record cost of the two durable stores considered for responses: append-only JSONL with one
write + fsync per batch (what xverse_eval.results.ResponseStore does) against SQLite in WAL mode with
one commit per batch (INSERT OR IGNORE on a primary key), at synchronous=NORMAL and FULL.

Records look like real response lines (~200 bytes: a 32-hex key, the request key and a
Loglikelihood). Each writer gets a fresh folder on the filesystem given by --dir (default: a temp
folder under the current directory, i.e. the filesystem that results/runs/ lives on).

    .venv/bin/python benchmarks/durability.py [--records 4000] [--batches 1,8,64] [--repeat 3]

At most --max-batches batches are written per measurement (fsync-bound writers take milliseconds per
batch on a busy disk), so batch size 1 uses fewer records than the larger batch sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path


def records(n: int) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        key = f"{i:032x}"
        line = json.dumps({"key": key, "request": f"mmlu/anatomy/test/{i // 4}/{i % 4}",
                           "response": {"kind": "Loglikelihood", "logprob": -1.234567890123 - i, "is_greedy": False,
                                        "n_tokens": 1, "context_logprob": None, "n_context_tokens": None}}) + "\n"
        out.append((key, line))
    return out


def jsonl_fsync(folder: Path, recs, batch: int) -> None:
    path = folder / "responses.jsonl"
    for k in range(0, len(recs), batch):
        chunk = "".join(line for _, line in recs[k:k + batch])
        with open(path, "a", encoding="utf-8") as fh:  # what ResponseStore.append does per batch
            fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())


def jsonl_nosync(folder: Path, recs, batch: int) -> None:
    path = folder / "responses.jsonl"
    with open(path, "a", encoding="utf-8") as fh:
        for k in range(0, len(recs), batch):
            fh.write("".join(line for _, line in recs[k:k + batch]))
            fh.flush()


def sqlite_wal(sync: str):
    def write(folder: Path, recs, batch: int) -> None:
        db = sqlite3.connect(folder / "responses.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={sync}")
        db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, line TEXT NOT NULL)")
        for k in range(0, len(recs), batch):
            db.execute("BEGIN")
            db.executemany("INSERT OR IGNORE INTO responses VALUES (?, ?)", recs[k:k + batch])
            db.execute("COMMIT")
        db.close()
    return write


WRITERS = {
    "jsonl, no fsync (not durable; floor)": jsonl_nosync,
    "jsonl + fsync per batch (chosen)": jsonl_fsync,
    "sqlite WAL, synchronous=NORMAL": sqlite_wal("NORMAL"),
    "sqlite WAL, synchronous=FULL": sqlite_wal("FULL"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=4000)
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-batches", type=int, default=400)
    ap.add_argument("--dir", default=".")
    args = ap.parse_args()
    all_recs = records(args.records)
    recs = all_recs
    print(f"up to {args.records} records ({args.max_batches} batches) of ~{sum(len(l) for _, l in recs) // len(recs)} bytes; median of {args.repeat} runs; "
          f"filesystem of {Path(args.dir).resolve()}; sqlite {sqlite3.sqlite_version}")
    print(f"{'writer':40s} {'batch':>5s} {'us/record':>10s} {'us/batch':>10s}")
    for batch in (int(b) for b in args.batches.split(",")):
        recs = all_recs[: args.max_batches * batch]
        for name, writer in WRITERS.items():
            times = []
            for _ in range(args.repeat):
                folder = Path(tempfile.mkdtemp(prefix="durability-", dir=args.dir))
                try:
                    t0 = time.perf_counter()
                    writer(folder, recs, batch)
                    times.append(time.perf_counter() - t0)
                finally:
                    shutil.rmtree(folder)
            per_record = statistics.median(times) / len(recs) * 1e6
            print(f"{name:40s} {batch:5d} {per_record:10.1f} {per_record * batch:10.1f}")


if __name__ == "__main__":
    main()
