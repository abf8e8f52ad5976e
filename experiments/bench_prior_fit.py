"""How long one reward-model fit takes as priors are pooled (``memrl search --optimizer model --prior A B C``).

    OMP_NUM_THREADS=1 python experiments/bench_prior_fit.py --runs RUN_S0 RUN_S1 RUN_S2 \\
        [--dataset family:80] [--tables experiments/results/exhaustive] [--config experiments/exhaustive.yaml]

The model search refits its Gaussian process before every trial on the prior's evaluations plus
the trials so far, so a search of B trials costs about B fits. This prints, for the first 1, 2,
... N runs pooled, the prior's size and the seconds of one fit (the first trial's: prior only),
and each fit's time as a ratio of the single run's, all measured in this run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="memrl train run folders (agent seeds of one config), pooled in this order")
    ap.add_argument("--dataset", default="family:80", help="the searched dataset (its descriptor is the context; not in the runs)")
    ap.add_argument("--tables", default="experiments/results/exhaustive", help="lookup tables (for the model's units and feature network)")
    ap.add_argument("--config", default="experiments/exhaustive.yaml", help="the env of the tables")
    args = ap.parse_args(argv)

    import bench_search as BS

    from memrl.data.loaders import load_dataset
    from memrl.errors import MemrlError
    from memrl.evaluation.lookup import LookupEvaluator
    from memrl.evaluation.surrogate import RewardSurrogate
    from memrl.search.model_sampler import load_prior

    try:
        env = BS.load_env(args.config)
        ev = LookupEvaluator.from_dir(Path(args.tables))
        if ev.feature_net is None:
            ev.set_feature_net(Path(env.pretrained) / "feature_net")
        data = load_dataset(args.dataset, ev.image_size, ev.image_channels)
        rows = []
        for n in range(1, len(args.runs) + 1):
            prior = load_prior(args.runs[:n], ev, data, args.dataset, ev.units, [env.method], False)
            t = time.perf_counter()
            RewardSurrogate(seed=0).fit(prior.X, prior.y)
            rows.append((n, len(prior.y), time.perf_counter() - t))
    except MemrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("| runs pooled | prior evaluations | seconds per fit | vs one run |")
    print("|---|---|---|---|")
    for n, size, sec in rows:
        print(f"| {n} | {size} | {sec:.1f} | {sec / rows[0][2]:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
