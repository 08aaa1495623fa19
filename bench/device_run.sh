#!/usr/bin/env bash
# One call on a lent GPU (device tool): calibration profile, kernel grid, GPU-only tests. Writes under $OUT.
# The device machine has PyTorch but not this package: it is imported from the checkout through a link.
set -uo pipefail
OUT=${OUT:-out/device}; mkdir -p "$OUT"
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/gpuhours
export PYTHONPATH=/tmp/pkg PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,memory.total --format=csv \
  | tee "$OUT/nvidia-smi.csv"
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
python3 -m pip list 2>/dev/null | grep -i -E "^(simpy|typer|networkx|pandas|matplotlib) " || true
echo "== calibrate bench"; time python3 -m gpuhours.cli calibrate bench --device cuda -o "$OUT/bench-h200.json" 2>&1 | tail -5
echo "== kernel grid"; time python3 bench/device_kernels.py "$OUT/kernels-h200.json" 2>&1 | grep -v Warning | tee "$OUT/kernels.log" | tail -60
echo "== GPU tests"; python3 -m pytest -q -rs -p no:cacheprovider tests/test_validation_bench.py tests/test_validation_fp8.py 2>&1 | tail -8
