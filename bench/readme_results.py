"""Publish one `rho demo` run, or one `rho demo --setting ladder`: copy its results.json to
docs/results/ (demo.json or ladder.json; a --quick run's to NAME-quick.json) and write, from
that copy, its blocks in README.md and docs/RESULTS.md (rho.experiment.published; a ladder's
figure to docs/ladder.png). tests/test_readme_results.py checks that every block is exactly
what its committed copy writes.

    rho demo --out /tmp/demo && python bench/readme_results.py /tmp/demo/results.json
    rho demo --setting ladder --out /tmp/ladder && python bench/readme_results.py \
        /tmp/ladder/results.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rho.experiment.published import publish

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a `rho demo` (or ladder) run's results.json")
    args = parser.parse_args()
    copy = publish(args.results, ROOT)
    print(f"wrote {copy.relative_to(ROOT)} ({copy.stat().st_size:,} bytes), README.md and "
          "docs/RESULTS.md")  # fmt: skip


if __name__ == "__main__":
    main()
