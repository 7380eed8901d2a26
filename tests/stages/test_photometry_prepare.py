"""The photometry stage's ``prepare`` hook: loads what the blocks need ahead of them, in
this process only when the blocks will run here."""

from __future__ import annotations

from obpipe.photometry import synthetic
from obpipe.pipeline import RunContext
from obpipe.stages.photometry import prepare


def test_prepare_loads_the_block_caches_in_this_process_only_for_local_blocks(
        small_survey: str, tmp_path) -> None:
    products = str(tmp_path / "products")
    assert prepare(RunContext(small_survey, products, scheduler="processes")) is None
    synthetic.clear_table_cache()
    assert synthetic._load_table.cache_info().currsize == 0
    thread = prepare(RunContext(small_survey, products, scheduler="threads"))
    assert thread is not None
    thread.join(timeout=120)
    assert not thread.is_alive()
    # the block function ran on the survey's first row: the shipped table is loaded
    assert synthetic._load_table.cache_info().currsize == 1
    assert not (tmp_path / "products").exists()  # nothing written
