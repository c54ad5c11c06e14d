"""Publish one `rho demo` run: copy its results.json to docs/results/ (demo.json; the quick
demo's to demo-quick.json) and write, from that copy, the README's "Results, in short" block
and docs/RESULTS.md's demo block (rho.experiment.published). tests/test_readme_results.py checks
that both blocks are exactly what the committed copy writes.

    rho demo --out /tmp/demo && python bench/readme_results.py /tmp/demo/results.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rho.experiment.published import publish

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a `rho demo` run's results.json")
    args = parser.parse_args()
    copy = publish(args.results, ROOT)
    print(f"wrote {copy.relative_to(ROOT)} ({copy.stat().st_size:,} bytes), README.md and "
          "docs/RESULTS.md")  # fmt: skip


if __name__ == "__main__":
    main()
