"""Exhaustive ground-truth tables: every mask on each dataset, one `memrl search` run per table.

    OMP_NUM_THREADS=1 nohup python experiments/exhaustive_tables.py &

(defaults: ``--datasets family:80 family:81 family:82 family:83 family:0 family:1
--seeds 0 --config experiments/exhaustive.yaml --runs runs/exhaustive
--results experiments/results/exhaustive``; ``--datasets family:80 family:0 --seeds 1`` makes the
second-seed tables.)

Each (dataset, seed) is ``memrl search --optimizer exhaustive --config CONFIG --dataset D
--set env.seed=S --out RUNS/NAME``; an interrupted run is resumed (``--resume``: finished masks
come from its cache). When a run has finished, its ``evaluations.csv`` (one row per mask, the
columns of ``memrl train``) and ``table.jsonl`` (the lookup table: every cached request with its
raw result, references included) are copied to ``RESULTS/NAME.csv`` / ``RESULTS/NAME.jsonl``;
a table already there is skipped. Commit each finished table: ``runs/`` is not kept.

``memrl search --lookup RESULTS ...`` and ``memrl train --lookup RESULTS`` answer from the tables.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path


def table_name(dataset: str, method: str, seed: int) -> str:
    return f"{dataset.replace(':', '-').replace('/', '-')}_{method}_seed{seed}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["family:80", "family:81", "family:82", "family:83", "family:0", "family:1"], help="datasets, one table each (test members are family:80-111)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="evaluation seeds (env.seed), one table each")
    ap.add_argument("--config", default="experiments/exhaustive.yaml", help="memrl search config (method, granularity, preset, reward)")
    ap.add_argument("--runs", default="runs/exhaustive", help="folder of the search runs (resumable)")
    ap.add_argument("--results", default="experiments/results/exhaustive", help="where finished tables are copied")
    args = ap.parse_args(argv)

    import yaml

    from memrl.cli import main as memrl

    method = (yaml.safe_load(Path(args.config).read_text()) or {}).get("env", {}).get("method", "lora")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for dataset in args.datasets:
            name = table_name(dataset, method, seed)
            csv, table = results / f"{name}.csv", results / f"{name}.jsonl"
            if csv.is_file() and table.is_file():
                print(f"{name}: already in {results}", flush=True)
                continue
            run = Path(args.runs) / name
            if (run / "config.yaml").is_file():
                argv_ = ["search", "--out", str(run), "--resume", "--no-progress"]
            else:
                argv_ = ["search", "--config", args.config, "--dataset", dataset, "--set", f"env.seed={seed}", "--out", str(run), "--no-progress"]
            t0 = time.time()
            print(f"{name}: memrl {' '.join(argv_)}", flush=True)
            rc = memrl(argv_)
            if rc != 0 or not (run / "table.jsonl").is_file():
                print(f"{name}: memrl search exited {rc}; stopping", file=sys.stderr)
                return rc or 1
            for src, dst in ((run / "evaluations.csv", csv), (run / "table.jsonl", table)):
                tmp = dst.with_suffix(dst.suffix + ".tmp")
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
            print(f"{name}: done in {time.time() - t0:.0f} s -> {csv}, {table}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
