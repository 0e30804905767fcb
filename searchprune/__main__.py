"""``python -m searchprune``: the ``searchprune`` command where its script is not on the
PATH (a Ray job's shell runs ``python`` from the PATH of the shell that ran ``ray start``)."""

from __future__ import annotations

import sys

from searchprune.cli import main

if __name__ == "__main__":
    sys.exit(main())
