#!/usr/bin/env bash
# One device call of the lead's H200 session: set-up, then the named steps, every result under $OUT.
#   bash benchmarks/h200_session.sh speed      # vs_lmeval (GPU alone), then start-up + sharded loading side by side
#   bash benchmarks/h200_session.sh mmlu80     # full MMLU, 80-layer XVERSE-65B architecture, end to end vs the dry run's floor
# Carry .devdata (data.tar.xz + smollm2-tokenizer) and .whl (lm_eval-0.4.13 wheel, installed --no-deps).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
[ -d .devdata/data ] || tar -C .devdata -xJf .devdata/data.tar.xz
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD XVERSE_EVAL_RANDOM_TOKENIZER=$PWD/.devdata/smollm2-tokenizer XVERSE_EVAL_PROGRESS_EVERY=20
TOK=$PWD/.devdata/smollm2-tokenizer
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
for step in "$@"; do
  case $step in
    speed)
      ( time python3 benchmarks/vs_lmeval.py --data-dir .devdata/data --tokenizer "$TOK" ) > "$OUT/vs_lmeval.log" 2>&1
      ( time python3 benchmarks/startup.py --data-dir .devdata/data --tokenizer "$TOK" --device cuda \
          --model random:xverse-65b:layers=16:kv_heads=8 --tasks ceval,cmmlu,gaokao,mmlu,gaokao_english,agieval,race,csqa,piqa,gsm8k --out "$OUT" ) > "$OUT/startup16.log" 2>&1 &
      ( time python3 benchmarks/sharded_load.py all --dir /tmp/xverse16 --out "$OUT" ) > "$OUT/sharded_load.log" 2>&1 &
      wait ;;
    mmlu80)
      ( time python3 benchmarks/startup.py --data-dir .devdata/data --tokenizer "$TOK" --device cuda \
          --model random:xverse-65b:kv_heads=8 --tasks mmlu --full --out "$OUT" ) > "$OUT/mmlu80.log" 2>&1 ;;
  esac
done
tail -n 40 "$OUT"/*.log
