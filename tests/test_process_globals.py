"""No process-global tricks in science or stage code (issue 16, item 5): the allocator
policy is set where a process starts (the command line's entry, the Dask nanny's pre-spawn
environment, the container image), ``gc.freeze`` only before the ingest fork."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "obpipe"
#: where a process's allocator policy may be set: the policy itself, the command line's
#: entry, the local cluster's nanny environment, ingest's own process pool
ALLOCATOR_ALLOWED = {"engine/memory.py", "cli.py", "engine/schedulers.py", "ingest.py"}


def _calls(pattern: str) -> dict[str, list[str]]:
    rx = re.compile(pattern)
    hits: dict[str, list[str]] = {}
    for p in PACKAGE.rglob("*.py"):
        lines = [ln.strip() for ln in p.read_text().splitlines()
                 if rx.search(ln) and not ln.lstrip().startswith(("#", "def "))]
        if lines:
            hits[p.relative_to(PACKAGE).as_posix()] = lines
    return hits


def test_allocator_policy_only_where_a_process_starts() -> None:
    hits = _calls(r"\b(reuse_block_buffers|set_process_allocator|_mallopt|mallopt)\(")
    assert set(hits) <= ALLOCATOR_ALLOWED, {k: v for k, v in hits.items()
                                            if k not in ALLOCATOR_ALLOWED}
    stages = {k for k in hits
              if k.startswith(("stages/", "spectra/", "engine/blockwise", "engine/pools"))}
    assert not stages, stages


def test_gc_freeze_only_before_the_ingest_fork() -> None:
    assert set(_calls(r"gc\.freeze\(")) == {"ingest.py"}


def test_the_command_line_sets_the_policy_for_its_worker_processes() -> None:
    """``obpipe`` at its entry puts the policy in its environment (inherited by the worker
    processes it spawns), without overriding a value the user set."""
    code = ("import os, sys\n"
            "from obpipe.cli import main\n"
            "main(['config', '--show'])\n"
            "print(os.environ['MALLOC_TRIM_THRESHOLD_'], os.environ['MALLOC_MMAP_THRESHOLD_'],"
            " file=sys.stderr)\n")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    from obpipe.engine.memory import REUSE_TRIM_THRESHOLD_BYTES

    assert res.stderr.split()[-2:] == [str(REUSE_TRIM_THRESHOLD_BYTES), "1048576"]
