#!/usr/bin/env bash
# Multi-GPU session on nvidia-h200-x2 (issue 9), in one device call of at most 9 minutes:
#   1. data parallel 1 vs 2 GPUs on the MMLU-shaped workload (200 questions of 8 subjects, 5-shot,
#      XVERSE-65B widths at 16 layers, random bf16), and the merged responses against the one-GPU ones;
#   2. the 80-layer XVERSE-65B architecture (random bf16, MHA) at TP 2 and at TP 1 on one GPU:
#      scoring tokens/s and decode ms/step;
#   3. the full MMLU test end to end on 2 GPUs: torchrun -m xverse_eval run (wall time, results).
# Needs .devdata/ (data/mmlu, smollm2-tokenizer) and .whl/ carried. Writes under $OUT:
#   multi_gpu.md (the tables), dp1/ dp2/ tp1/ tp2/ (timing.json), mmlu_full/ (results, report, time), logs.
# Stage time limits (seconds): DP_LIMIT (90 each), TP_LIMIT (120 each), FULL_LIMIT (default: what is left of
# BUDGET=530 s); the full run's model: FULL_MODEL. multi_gpu.md is rewritten after every stage.
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 XVERSE_EVAL_PROGRESS_EVERY=20 OMP_NUM_THREADS=4
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export XVERSE_EVAL_RANDOM_TOKENIZER=$PWD/.devdata/smollm2-tokenizer
D=.devdata/data
TR="python3 -m torch.distributed.run --standalone"
M16="random:xverse-65b:layers=16"
M80="random:xverse-65b"
FULL_MODEL=${FULL_MODEL:-random:xverse-65b:kv_heads=8}
nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader | tee $OUT/gpus.txt
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a $OUT/gpus.txt
start=$(date +%s)
stage() { summary; echo "== $1 at +$(( $(date +%s) - start ))s"; }
summary() { python3 benchmarks/multi_gpu.py summary $OUT > /dev/null 2>&1 || true; }
left() { echo $(( ${BUDGET:-530} - ($(date +%s) - start) )); }  # seconds left of the whole session

stage "DP 1 GPU"
CUDA_VISIBLE_DEVICES=0 timeout ${DP_LIMIT:-90} $TR --nproc-per-node 1 benchmarks/multi_gpu.py dp --model $M16 --data-dir $D --out $OUT/dp1 > $OUT/dp1.log 2>&1; tail -2 $OUT/dp1.log
stage "DP 2 GPUs"
timeout ${DP_LIMIT:-90} $TR --nproc-per-node 2 benchmarks/multi_gpu.py dp --model $M16 --data-dir $D --out $OUT/dp2 > $OUT/dp2.log 2>&1; tail -2 $OUT/dp2.log
python3 benchmarks/multi_gpu.py compare $OUT/dp1 $OUT/dp2 --write $OUT/dp_compare.json

stage "TP 2, 80 layers"
timeout ${TP_LIMIT:-120} $TR --nproc-per-node 2 benchmarks/multi_gpu.py tp --model $M80 --tp-size 2 --data-dir $D --limit 8 --out $OUT/tp2 > $OUT/tp2.log 2>&1; tail -2 $OUT/tp2.log
stage "TP 1, 80 layers, one GPU"
CUDA_VISIBLE_DEVICES=0 timeout ${TP_LIMIT:-120} $TR --nproc-per-node 1 benchmarks/multi_gpu.py tp --model $M80 --tp-size 1 --data-dir $D --limit 8 --out $OUT/tp1 > $OUT/tp1.log 2>&1; tail -2 $OUT/tp1.log

stage "full MMLU, 2 GPUs"
t0=$(date +%s.%N)
timeout ${FULL_LIMIT:-$(left)} $TR --nproc-per-node 2 -m xverse_eval run --model $FULL_MODEL --tasks mmlu --data-dir $D --device cuda \
  --output-dir $OUT/mmlu_full > $OUT/mmlu_full.log 2>&1
echo "rc=$? wall_s=$(python3 -c "print(round($(date +%s.%N) - $t0, 1))")" | tee $OUT/mmlu_full_time.txt
grep -E "requests \(all ranks\)|error" $OUT/mmlu_full.log | tail -3
cat $OUT/mmlu_full/responses*.jsonl 2>/dev/null | wc -l | sed 's/^/responses stored: /' | tee -a $OUT/mmlu_full_time.txt
rm -f $OUT/mmlu_full/plan.jsonl $OUT/mmlu_full/responses*.jsonl $OUT/mmlu_full/samples/*.jsonl  # large; counts kept above
stage "done"

summary; cat $OUT/multi_gpu.md
