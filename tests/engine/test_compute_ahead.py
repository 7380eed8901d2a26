"""obpipe.engine.schedulers.compute_ahead: batches of Dask tasks computed a few batches
ahead of the caller, results in batch order."""

from __future__ import annotations

import threading

import dask
import pytest

from obpipe.engine.schedulers import compute_ahead

_STARTED: list[int] = []
_LOCK = threading.Lock()


def _task(i: int) -> int:
    with _LOCK:
        _STARTED.append(i)
    return i * i


def _batches(n_batches: int, size: int) -> list[list]:
    return [[dask.delayed(_task)(b * size + k, dask_key_name=f"t-{b}-{k}")
             for k in range(size)] for b in range(n_batches)]


@pytest.mark.parametrize("ahead", [0, 1, 2])
def test_results_in_batch_order_and_at_most_ahead_batches_early(ahead: int) -> None:
    _STARTED.clear()
    seen = []
    for i, done in enumerate(compute_ahead(_batches(6, 3), ahead=ahead,
                                           scheduler="threads")):
        # while the caller holds batch i, no batch after i + ahead has started
        with _LOCK:
            assert max(_STARTED) < (i + ahead + 1) * 3, (i, sorted(_STARTED))
        seen.append(done)
    assert seen == [tuple((b * 3 + k) ** 2 for k in range(3)) for b in range(6)]


def _fail(i: int) -> int:
    raise ValueError(f"block {i}")


def test_errors_reach_the_caller_and_later_batches_are_cancelled() -> None:
    _STARTED.clear()
    batches = [[dask.delayed(_task)(0)], [dask.delayed(_fail)(1)],
               *[[dask.delayed(_task)(10 + b)] for b in range(10)]]
    got = []
    with pytest.raises(ValueError, match="block 1"):
        for done in compute_ahead(batches, ahead=1, scheduler="threads"):
            got.append(done)
    assert got == [(0,)]
    assert max(_STARTED) <= 10  # batches beyond the window (ahead = 1) never ran
    with pytest.raises(ValueError, match="ahead"):
        next(compute_ahead([], ahead=-1))
