#!/usr/bin/env bash
# The exhaustive tables on a GPU machine (the `device` tool): one memrl search process per table,
# all on one GPU, stopped at a deadline; finished tables, logs and every run folder (resumable,
# here or on a CPU with experiments/exhaustive_tables.py --device cpu) come back as $OUT/runs.tgz.
#   bash experiments/device/tables.sh SECONDS      (wheels of what the machine lacks in .whl/)
set -u
DEADLINE=${1:-500}
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python3 -c "import torch, diffusers, peft, optuna, gymnasium, memrl.cli; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))" || exit 4
nproc; lscpu | grep 'Model name'
mkdir -p runs/device-tables runs/device-logs runs/exhaustive
pids=()
for spec in family:80/0 family:81/0 family:82/0 family:83/0 family:0/0 family:1/0 family:80/1 family:0/1; do
  d=${spec%/*}; s=${spec#*/}
  python3 experiments/exhaustive_tables.py --datasets $d --seeds $s --runs runs/exhaustive --results runs/device-tables --device cuda > runs/device-logs/${d/:/-}-s$s.txt 2>&1 &
  pids+=($!)
done
while [ $(( $(date +%s) - T0 )) -lt $DEADLINE ]; do
  alive=0; for p in "${pids[@]}"; do kill -0 $p 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  sleep 5
done
for p in "${pids[@]}"; do kill -INT $p 2>/dev/null; done; sleep 8
for p in "${pids[@]}"; do kill -9 $p 2>/dev/null; done
tail -n 3 runs/device-logs/*.txt
for r in runs/exhaustive/*/; do echo "$r $(grep -c . $r/evaluations.csv 2>/dev/null) rows"; done
tar czf $OUT/runs.tgz --exclude='*.png' runs/exhaustive runs/device-tables runs/device-logs
ls -la $OUT
