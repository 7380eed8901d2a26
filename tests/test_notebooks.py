"""The notebooks in ``notebooks/`` run top to bottom (nbclient, a real kernel) on a small run.

They are stored without outputs; paths reach them through ``OBPIPE_*`` environment
variables, which the kernel inherits.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.small_run import small_run

# end to end (the notebooks run on a whole small run): in make test, not in make test-fast
pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return small_run(tmp_path_factory)


def test_there_are_notebooks_stored_without_outputs() -> None:
    assert {"01_tour_of_the_products.ipynb", "02_paper_figures.ipynb",
            "03_your_own_data.ipynb"} <= set(NAMES)
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, name
        assert any("OBPIPE_" in c.source for c in nb.cells if c.cell_type == "code"), name


def _execute(name: str, workdir: Path, env: dict[str, str],
             monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()  # raises CellExecutionError with the failing cell and traceback
    return nb


def _outputs(nb: nbformat.NotebookNode) -> tuple[str, int]:
    """All stream / text output, and the number of images shown."""
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                text.append(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                images += "image/png" in out.data
                text.append(out.data.get("text/plain", ""))
    return "\n".join(text), images


def test_tour_of_the_products(run: tuple[str, str], tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    survey, products = run
    nb = _execute("01_tour_of_the_products.ipynb", tmp_path,
                  {"OBPIPE_SURVEY": survey, "OBPIPE_PRODUCTS": products}, monkeypatch)
    text, images = _outputs(nb)
    assert "stages complete:" in text and "luminosity" in text
    assert images >= 4  # spectrum, visits, mean spectrum, luminosities


def test_paper_figures(run: tuple[str, str], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    survey, products = run
    out = tmp_path / "report"
    nb = _execute("02_paper_figures.ipynb", tmp_path,
                  {"OBPIPE_SURVEY": survey, "OBPIPE_PRODUCTS": products,
                   "OBPIPE_REPORT_DIR": str(out)}, monkeypatch)
    assert (out / "report.html").exists()
    pngs = sorted(p.name for p in out.glob("*.png"))
    _, images = _outputs(nb)
    # every report figure shown, plus the hand-drawn Fig. 3 (and Figs. 11, 12 with distances)
    assert images >= len(pngs) + 1 and len(pngs) >= 8


def test_your_own_data(run: tuple[str, str], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    survey, products = run
    work = tmp_path / "own"
    nb = _execute("03_your_own_data.ipynb", tmp_path,
                  {"OBPIPE_SURVEY": survey, "OBPIPE_PRODUCTS": products,
                   "OBPIPE_WORKDIR": str(work), "OBPIPE_N_FILES": "160"}, monkeypatch)
    assert len(list((work / "fits").glob("*.fits.gz"))) == 160
    assert (work / "survey.zarr").is_dir() and (work / "report" / "report.html").exists()
    text, _ = _outputs(nb)
    # the stand-in files are the reference spectra: same E(B-V) after the round trip
    line = next(s for s in text.splitlines() if s.startswith("E(B-V): max |difference|"))
    assert float(line.split()[-2]) < 1e-3, line
    assert os.path.exists(work / "products" / "products.zarr")
