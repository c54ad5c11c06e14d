"""Entry point: ``python tools/build_demo [options]`` from the repository root.

Owns only the start-up: when run as a directory (no parent package), it puts ``tools/`` on
``sys.path`` so the package imports as ``build_demo``, then hands over to
:func:`build_demo.build.main`. ``python -m build_demo`` from inside ``tools/`` also works.
"""

import sys
from pathlib import Path

if not __package__:  # ``python tools/build_demo``: make the package itself importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from build_demo.build import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
