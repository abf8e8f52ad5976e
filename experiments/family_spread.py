"""How much the dataset descriptor's scalars vary over the family's training members vs the built-ins.

    python experiments/family_spread.py

Prints, for log size, duplication rate (share of training images with a near-identical twin) and
the share of distinct captions, the standard deviation over the 64 training members of
``family:N`` and over the 6 built-in variants. A policy can only use context that varies.
"""

from __future__ import annotations

import sys

import numpy as np

from memrl.data import digits, family
from memrl.envs.descriptor import duplication_rate


def scalars(d) -> tuple[float, float, float]:  # noqa: ANN001
    n = len(d.train)
    return np.log(n), duplication_rate(d.train.images), len(set(d.train.captions)) / n


def main() -> int:
    fam = np.array([scalars(family.member(i)) for i in family.ids("train")])
    built = np.array([scalars(digits.variant_splits(v)) for v in digits.VARIANTS])
    print(f"| scalar | std over {len(fam)} family training members | std over {len(built)} built-ins |")
    print("|---|---|---|")
    for j, name in enumerate(("log size", "duplication rate", "distinct-caption share")):
        print(f"| {name} | {fam[:, j].std():.3f} | {built[:, j].std():.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
