"""Every ```python block of README.md runs as written (issue 17, item 11), and the README
names no commit (issue 16 item 10: measurement history lives in docs/).

The blocks are executed in a directory laid out as the README assumes: ``demo/survey.zarr``
and ``demo/products`` (the shared small run of ``tests/small_run.py``), and an ingested
``survey.zarr`` with its ``survey.ingest_report.csv`` (the own-data section). Each
top-level expression is evaluated and, when lazy (dask-backed xarray), computed, so a
snippet that fails only at compute time fails here too.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from tests.small_run import small_run

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, source) of every ```python fenced block."""
    out = []
    for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        out.append((text[: m.start()].count("\n") + 1, m.group(1)))
    return out


BLOCKS = python_blocks(README.read_text())


def _materialize(value: object) -> None:
    """Compute a lazy result (an xarray object backed by dask, or a tuple of them)."""
    if isinstance(value, tuple):
        for v in value:
            _materialize(v)
    elif hasattr(value, "compute") and callable(value.compute):
        value.compute()


def run_block(source: str, name: str) -> dict[str, object]:
    """Execute ``source`` statement by statement; expressions are computed."""
    namespace: dict[str, object] = {"__name__": "__readme__"}
    tree = ast.parse(source, name)
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr):
            code = compile(ast.Expression(stmt.value), name, "eval")
            _materialize(eval(code, namespace))  # noqa: S307 - the README's own code
        else:
            exec(compile(ast.Module([stmt], []), name, "exec"), namespace)  # noqa: S102
    return namespace


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from obpipe.ingest import IngestConfig, export_fits, ingest

    survey, products = small_run(tmp_path_factory)
    root = Path(tmp_path_factory.mktemp("readme"))
    (root / "demo").mkdir()
    os.symlink(survey, root / "demo" / "survey.zarr")
    os.symlink(products, root / "demo" / "products")
    files, table = export_fits(survey, str(root / "fits"), rows=slice(0, 6))
    ingest(files, table, str(root / "survey.zarr"), config=IngestConfig(chunk_size=8),
           scheduler="threads")
    return root


def test_readme_has_the_documented_snippets() -> None:
    assert len(BLOCKS) >= 4
    joined = "\n".join(src for _, src in BLOCKS)
    for call in ("open_run", "ds.obpipe.star(", "where(", "ingest_report.csv"):
        assert call in joined, call


@pytest.mark.slow  # the shared small run (~25-45 s) unless another test file built it
@pytest.mark.parametrize("line, source", BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_python_block_runs(readme_dir: Path, line: int, source: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(readme_dir)
    try:
        run_block(source, f"README.md:{line}")
    finally:
        plt.close("all")


def test_readme_adql_query_columns_need_no_column_map() -> None:
    """Every column the README's Gaia archive query returns is read by name (no map)."""
    import numpy as np
    import pandas as pd

    from obpipe.io.tables import normalize_table

    (sql,) = re.findall(r"^```sql\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    select = sql.split("SELECT", 1)[1].split("FROM", 1)[0]
    select = re.sub(r"DISTANCE\(.*\)", "distance", select, flags=re.S)  # commas inside
    names = [item.split(" AS ")[-1].split(".")[-1].strip() for item in select.split(",")]
    assert {"source_id", "parallax", "phot_g_mean_mag", "j_m", "ks_msigcom"} <= set(names)
    frame = pd.DataFrame({n: np.arange(3.0) + 1 for n in names})
    out, problems = normalize_table(frame, source="adql")
    assert not problems
    unread = set(names) - {"match_arcsec", "ph_qual"}
    expected = {"obsid", "gaia_id", "ra", "dec", "parallax", "parallax_error", "pmra",
                "pmra_error", "pmdec", "pmdec_error", "ruwe", "astrometric_params_solved",
                "nu_eff_used_in_astrometry", "pseudocolour", "ecl_lat", "phot_g_mean_mag",
                "phot_bp_mean_mag", "phot_rp_mean_mag", "phot_g_mean_mag_error",
                "phot_bp_mean_mag_error", "phot_rp_mean_mag_error", "J", "J_err", "H",
                "H_err", "Ks", "Ks_err"}
    assert expected <= set(out.columns), expected - set(out.columns)
    assert len(unread) == len(expected)  # one cube column per returned column


#: a git commit id as the docs quote one: 7-40 lowercase hex digits, at least one letter
#: and one digit (so neither a word such as "decade" nor a number such as 1234567), not
#: part of a longer word or number
COMMIT_HASH = re.compile(r"(?<![0-9A-Za-z_])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])"
                         r"[0-9a-f]{7,40}(?![0-9A-Za-z_])")


def test_commit_hash_pattern() -> None:
    for text in ("at 588a363 on", "(e2217b7)", "since ebb6c48,", "1bb293e",
                 "commit 0f9d2ee5a1b7c3d4e5f60718293a4b5c6d7e8f90"):
        assert COMMIT_HASH.search(text), text
    for text in ("a decade of accepted facades", "27,784 spectra, 1234567 rows", "3.5682",
                 "1e-17 erg", "dask/dask-ml#1023", "deadbeefcafe", "SHA-256", "0x1f",
                 "tcp://127.0.0.1:8786", "zarr==3.1.6", "2026-12-05", "abc1234def_x"):
        assert not COMMIT_HASH.search(text), text


def test_readme_names_no_commit() -> None:
    """Measurement history and per-commit figures live in docs/performance.md and
    docs/validation.md; the README shows current figures without commit ids."""
    text = README.read_text()
    found = [(text[: m.start()].count("\n") + 1, m.group()) for m in COMMIT_HASH.finditer(text)]
    assert not found, f"commit-like ids in README.md (line, id): {found}"
