"""Start-up cost: ``python -c "import searchprune"`` and ``searchprune list``.

Each command runs in a fresh interpreter ``--repeats`` times; the median wall time is
printed. ``--compare PATH`` runs the same commands against another checkout (its package
directory first on ``PYTHONPATH``) in the same run, alternating, and prints the ratio, so
a before/after figure comes from one run on one machine state. Run it on an idle machine:

    .venv/bin/python benchmarks/import_time.py --compare /tmp/oldsrc/src
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import searchprune": "import searchprune",
    "searchprune list": "from searchprune.cli import main; main(['list'])",
}

# The other checkout goes first on sys.path: the path finder runs before the editable
# install's finder, so its packages are the ones imported.
_OTHER = "import sys; sys.path.insert(0, {path!r}); "


def wall_time(code: str, other: str | None) -> float:
    """Seconds one fresh interpreter takes to run ``code`` (against ``other`` if given)."""
    if other:
        code = _OTHER.format(path=other) + code
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compare", help="another checkout's package root, e.g. /tmp/oldsrc/src")
    args = parser.parse_args()
    for label, command in COMMANDS.items():
        here, there = [], []
        for _ in range(args.repeats):
            here.append(wall_time(command, None))
            if args.compare:
                there.append(wall_time(command, args.compare))
        now = statistics.median(here)
        line = f"{label:<22} this checkout {now:6.2f} s"
        if there:
            before = statistics.median(there)
            line += f"   {args.compare}: {before:6.2f} s   ratio {before / now:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
