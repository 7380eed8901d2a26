"""Peak resident memory of a process tree, sampled in a thread (shared by the benchmarks).

Used by ``benchmarks/spectral.py``, ``benchmarks/distance.py`` and ``benchmarks/scale.py``
(imported as ``from _memory import PeakRSS``: a script's own directory is first on
``sys.path``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable

import psutil


class PeakRSS:
    """Peak resident memory (bytes) of process ``pid`` (default: this one) and all its
    descendants, sampled every ``interval_s`` seconds while the context is open.

    Attributes: ``peak`` (the whole tree), ``root_peak`` (process ``pid`` alone),
    ``per_pid`` (the peak of each of ``pids``, descendants to follow on their own) and,
    with ``keep_samples``, ``samples``: (unix time s, tree bytes, tree CPU s) of every
    sample, to attribute the peak and the CPU time to a stage. The tree's CPU seconds
    are user + system of every live process plus those of the children each has reaped
    (so a worker that exits still counts, once its parent has waited for it). A peak
    shorter than the interval can be missed."""

    def __init__(self, pid: int | None = None, interval_s: float = 0.05,
                 pids: Iterable[int] = (), keep_samples: bool = False) -> None:
        self.peak = 0
        self.root_peak = 0
        self.per_pid: dict[int, int] = dict.fromkeys(pids, 0)
        self.samples: list[tuple[float, int, float]] = []
        self._pid = os.getpid() if pid is None else pid
        self._keep = keep_samples
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)

    def _run(self, interval: float) -> None:
        try:
            root = psutil.Process(self._pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:  # the root exited
                break
            total = 0
            cpu = 0.0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    if self._keep:
                        t = p.cpu_times()
                        cpu += t.user + t.system + t.children_user + t.children_system
                except psutil.Error:
                    continue
                total += rss
                if p is root:
                    self.root_peak = max(self.root_peak, rss)
                elif p.pid in self.per_pid:
                    self.per_pid[p.pid] = max(self.per_pid[p.pid], rss)
            self.peak = max(self.peak, total)
            if self._keep:
                self.samples.append((time.time(), total, cpu))
            self._stop.wait(interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
