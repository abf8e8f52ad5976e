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

Across sessions (``runs/`` may be gone): ``--snapshot`` writes each unfinished run's finished
evaluations to ``RESULTS/partial/NAME.jsonl`` (a lookup table; commit it) and exits. When a
run folder is missing but its snapshot is there, the new run's cache (``RUNS/NAME.sqlite``,
outside the run folder) is seeded from it first (``memrl cache import``), so the masks it holds
are cache hits, not fine-tunes. A snapshot is removed when its table is finished.

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


def _move_to_device(config: Path, device: str) -> None:
    """Rewrite a run's saved env.device (atomically) so that ``--resume`` continues it on ``device``."""
    import yaml

    saved = yaml.safe_load(config.read_text())
    if saved.get("env", {}).get("device") == device:
        return
    print(f"{config.parent.name}: env.device {saved['env'].get('device')} -> {device}", flush=True)
    saved["env"]["device"] = device
    tmp = config.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(saved, sort_keys=False))
    os.replace(tmp, config)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["family:80", "family:81", "family:82", "family:83", "family:0", "family:1"], help="datasets, one table each (test members are family:80-111)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="evaluation seeds (env.seed), one table each")
    ap.add_argument("--config", default="experiments/exhaustive.yaml", help="memrl search config (method, granularity, preset, reward)")
    ap.add_argument("--runs", default="runs/exhaustive", help="folder of the search runs (resumable)")
    ap.add_argument("--results", default="experiments/results/exhaustive", help="where finished tables are copied")
    ap.add_argument(
        "--device", default=None,
        help="torch device of the evaluations (default: the config's env.device); a run begun on another device continues on "
        "this one (its config.yaml's env.device is rewritten; every row's request records the runtime, device included, that computed it)",
    )
    ap.add_argument("--snapshot", action="store_true", help="write every unfinished run's finished evaluations to RESULTS/partial/NAME.jsonl and exit")
    args = ap.parse_args(argv)
    if args.snapshot:
        return snapshot(Path(args.runs), Path(args.results))

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
                if args.device is not None:
                    _move_to_device(run / "config.yaml", args.device)
                argv_ = ["search", "--out", str(run), "--resume", "--no-progress"]
            else:
                argv_ = ["search", "--config", args.config, "--dataset", dataset, "--set", f"env.seed={seed}", "--out", str(run), "--no-progress"]
                part = results / "partial" / f"{name}.jsonl"
                if part.is_file():  # an earlier session's evaluations: cache hits for this run
                    cache = Path(args.runs) / f"{name}.sqlite"
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    memrl(["cache", "import", str(part), "--into", str(cache)])
                    argv_ += ["--cache", str(cache)]
                if args.device is not None:
                    argv_ += ["--device", args.device]
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
            (results / "partial" / f"{name}.jsonl").unlink(missing_ok=True)
            print(f"{name}: done in {time.time() - t0:.0f} s -> {csv}, {table}", flush=True)
    return 0


def snapshot(runs: Path, results: Path) -> int:
    """Each unfinished run's finished evaluations as ``RESULTS/partial/NAME.jsonl`` (atomic)."""
    from memrl.evaluation.evaluator import Evaluator
    from memrl.search.config import SearchConfig
    from memrl.search.run import export_lookup_table

    for cfg_path in sorted(runs.glob("*/config.yaml")):
        run = cfg_path.parent
        if (results / f"{run.name}.jsonl").is_file():
            continue
        env = SearchConfig.load(cfg_path).env
        cache = env.cache or run / "evaluations.sqlite"
        ev = Evaluator(env.pretrained, device="cpu", cache=cache, feature_net=env.feature_net, granularity=env.granularity, resolution=env.resolution)
        out = results / "partial" / f"{run.name}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        n = export_lookup_table(ev, out, env.methods or [env.method])
        print(f"{run.name}: {n} finished evaluation(s) -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
