"""Where and with what a run was made, for ``summary.json`` and ``--version``."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second (``2026-12-01T13:05:00+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def version() -> str:
    """searchprune's installed version."""
    try:
        return metadata.version("searchprune")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


@cache
def git_commit() -> str | None:
    """The commit of the source tree searchprune is imported from, with ``+dirty`` when
    it has uncommitted changes; None outside a git checkout (an installed wheel)."""
    source = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no", "."],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if status else head


def environment(device: str, started_at: str, resumed: bool) -> dict[str, Any]:
    """The summary's ``environment`` section: versions, git commit, host, device and the
    run's start and end (``started_at`` is this process's start; ``resumed`` says the
    run continued a checkpoint made earlier)."""
    import torch

    return {
        "searchprune": version(),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device": device,
        "device_name": (
            torch.cuda.get_device_name(torch.device(device))
            if device.startswith("cuda")
            else platform.processor() or platform.machine()
        ),
        "threads": torch.get_num_threads(),
        "started_at": started_at,
        "finished_at": now_iso(),
        "resumed": resumed,
    }
