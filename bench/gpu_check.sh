#!/usr/bin/env bash
# The GPU check: bench/gpu_bench.py on the 100m preset, then the test suite's GPU-marked tests.
#
#   bash bench/gpu_check.sh [gpu_bench.py options, e.g. --peak-tflops 400 --json out.json]
#
# Assumptions: run on Linux from a checkout of this repository, with Python >= 3.10 ($PYTHON,
# default python, else python3). rho itself is imported from src/ (no install needed). If torch or another
# dependency is missing, `pip install -e ".[dev]"` installs them (torch from PyPI: a CUDA build on
# Linux x86_64); that needs the network and adds 1-3 minutes. A GPU (nvidia-smi works) whose
# torch cannot use it is an error, not a silent CPU run; without a GPU the bench runs its CPU
# fallback (preset tiny, a few steps) and the GPU tests are skipped.
# Budget on one H100 with torch installed: bench ~1.5 min (capped at 4), GPU tests ~1 min.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    have_gpu=1
else
    echo "no NVIDIA GPU found (nvidia-smi): CPU fallback"
    have_gpu=0
fi

deps="torch, transformers, accelerate, numpy, safetensors, tokenizers, tqdm, matplotlib, pyarrow"
deps="$deps, datasets, pytest, hypothesis"
if ! "$PYTHON" -c "import $deps" 2>/dev/null; then
    echo "installing the missing dependencies: pip install -e .[dev]"
    "$PYTHON" -m pip install --quiet -e ".[dev]"
fi
"$PYTHON" - <<'EOF'
import platform, torch, transformers, accelerate
print(f"python {platform.python_version()} | torch {torch.__version__} (CUDA {torch.version.cuda})"
      f" | transformers {transformers.__version__} | accelerate {accelerate.__version__}")
print(f"torch.cuda.is_available(): {torch.cuda.is_available()}")
EOF
if [[ $have_gpu == 1 ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"
then
    echo "error: a GPU is present but this torch cannot use it (a CPU-only build?)" >&2
    exit 1
fi

echo "== bench/gpu_bench.py"
cap=(); command -v timeout >/dev/null && cap=(timeout 240)
${cap[@]+"${cap[@]}"} "$PYTHON" bench/gpu_bench.py "$@"
echo "== GPU-marked tests"
"$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests/
echo "gpu_check: done in $((SECONDS - start)) s"
