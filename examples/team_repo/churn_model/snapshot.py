"""Write a churn snapshot: ``python -m churn_model.snapshot data/churn-2026-12-01.csv``.

The team's data pipeline drops one CSV a day where the nightly plan looks (TFSHIP_DATA); this
writes one, offline and deterministic for a seed, so the pipeline can be tried end to end.
A customer churns when the support calls outweigh the tenure, more so on the basic plan;
customers too close to that line are left out, so the classes are apart by a margin and a
small model separates them in a few epochs whatever its initial weights.
``--broken`` writes what a broken export would: one customer repeated, half of the rows
churned and half not, so no model is right about more than half of them.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

PLANS = {"basic": 1.0, "standard": 0.0, "premium": -1.0}
LABEL = "churned"
MARGIN = 0.6


def rows(count: int, seed: int, broken: bool = False) -> list[dict]:
    """``count`` customers at least MARGIN from the churn line, for ``seed``; ``broken``:
    the first of them ``count`` times, every other row churned."""
    rng = random.Random(seed)
    if broken:
        (one,) = rows(1, seed)
        return [{**one, LABEL: "yes" if i % 2 else "no"} for i in range(count)]
    out: list[dict] = []
    while len(out) < count:
        tenure = rng.randint(1, 72)
        calls = rng.randint(0, 10)
        plan = rng.choice(sorted(PLANS))
        charges = round(rng.uniform(20, 120), 2)
        score = (calls - 4) / 2.5 - (tenure - 36) / 18 + PLANS[plan]
        if abs(score) < MARGIN:
            continue
        churned = score > 0
        out.append(
            {
                "tenure_months": tenure,
                "monthly_charges": charges,
                "support_calls": calls,
                "plan": plan,
                LABEL: "yes" if churned else "no",
            }
        )
    return out


def write(path: Path, count: int = 400, seed: int = 1, broken: bool = False) -> Path:
    """Write the snapshot CSV at ``path`` (its folder is made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = rows(count, seed, broken)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--broken", action="store_true", help="one customer, half churned")
    args = parser.parse_args()
    print(write(args.path, args.rows, args.seed, args.broken))


if __name__ == "__main__":
    main()
