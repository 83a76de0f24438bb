#!/usr/bin/env bash
# Runs tools/gpu_check.py on a CUDA machine without network access. ASSETS holds what it needs:
#   whl/                     wheels of the training stack (trl, peft, transformers, datasets, dill,
#                            multiprocess, bitsandbytes, liger-kernel) for that machine's Python
#   llama_cpp_python-0.3.36.tar.gz   the pinned sdist (docs/gpu-check.md says how to slim it)
#   tokenizer/               the tiny default model's tokenizer (saved with transformers)
# Usage: bash tools/gpu_check.sh ASSETS OUT [budget seconds]
set -euo pipefail
ASSETS=${1:?assets folder}
OUT=${2:?output folder}
BUDGET=${3:-540}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$ASSETS"/whl/*.whl
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PATH="$(dirname "$(command -v python3)"):/usr/local/cuda/bin:$PATH"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(( $(nproc) > 4 ? $(nproc) - 3 : 1 ))}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 tools/gpu_check.py --assets "$ASSETS" --out "$OUT" --budget "$BUDGET" ${GPU_CHECK_ARGS:-} 2>&1 | tee "$OUT/gpu_check.log"
