"""Does an evaluation's result depend on the CPU thread count? (Why the thread count is in the cache key.)

    python experiments/thread_determinism.py [--model runs/digits-base] [--preset quick] [--threads 1 2]

Runs the same ``memrl evaluate`` request (same model, data, method, mask, seed) once per thread
count, each in its own process with ``torch.set_num_threads(n)``, and prints the metrics side by
side with their largest difference. CPU kernels split reductions by thread, so the sums are added
in another order; over a fine-tune those rounding differences grow into different numbers. The
evaluation cache therefore keys CPU results by thread count (docs/design.md, section 7).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

KEYS = ("fid", "kid", "nn_own_rate", "replication_rate", "noise_norm_mean", "extraction_rate", "final_loss")


def run(model: str, preset: str, method: str, mask: str, threads: int, out: Path) -> dict:
    code = (
        "import sys, torch; torch.set_num_threads(int(sys.argv[1])); from memrl.cli import main; "
        "sys.exit(main(sys.argv[2:]))"
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-c", code, str(threads), "evaluate", "--pretrained", model, "--preset", preset, "--method", method,
           "--mask", mask, "--out", str(out), "--json"]  # fmt: skip
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "result.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/digits-base", help="pretrained model folder")
    ap.add_argument("--preset", default="quick", help="evaluation preset (quick: seconds)")
    ap.add_argument("--method", default="lora", help="PEFT method")
    ap.add_argument("--mask", default="all", help="mask")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to compare")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = {n: run(args.model, args.preset, args.method, args.mask, n, Path(tmp) / f"t{n}") for n in args.threads}
    print(f"| metric | {' | '.join(f'{n} thread(s)' for n in args.threads)} | max abs difference |")
    print("|---|" + "---|" * (len(args.threads) + 1))
    for k in KEYS:
        vals = [float(res[n][k]) for n in args.threads]
        print(f"| {k} | {' | '.join(f'{v:.6g}' for v in vals)} | {max(vals) - min(vals):.3g} |")
    same = all(res[n][k] == res[args.threads[0]][k] for n in args.threads for k in KEYS)
    print(f"\nbit-identical across thread counts: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
