"""Time for ``obpipe run --address`` to give up on a scheduler nobody listens on, for a
few ``[run] connect_timeout_s`` values, side by side in one run.

The wall time of the refusal (interpreter start and the survey check included) should
follow the configured timeout, not Dask's 30 s default; tests/test_cli.py checks only that
the one-line error names the address and the configured timeout.

    python benchmarks/connect_timeout.py SURVEY.zarr [--timeouts 1 2 5] \
        [--address tcp://127.0.0.1:9]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def refusal_seconds(survey: str, address: str, timeout_s: float, work: Path
                    ) -> tuple[float, int, str]:
    """(wall seconds, exit status, last stderr line) of one refused ``obpipe run``."""
    config = work / f"run_{timeout_s:g}.toml"
    config.write_text(f"[run]\nconnect_timeout_s = {timeout_s}\n")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "obpipe.cli", "run", survey, "--out",
                          str(work / "products"), "--address", address, "--config", str(config)],
                         capture_output=True, text=True, timeout=600)
    lines = res.stderr.strip().splitlines()
    return time.perf_counter() - t0, res.returncode, lines[-1] if lines else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("survey", help="a survey store (any; nothing is computed)")
    p.add_argument("--timeouts", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    p.add_argument("--address", default="tcp://127.0.0.1:9")
    args = p.parse_args(argv)
    print(f"{'connect_timeout_s':>18} {'wall_s':>8} {'exit':>5}  reason")
    with tempfile.TemporaryDirectory(prefix="obpipe-connect-") as tmp:
        for t in args.timeouts:
            wall, rc, reason = refusal_seconds(args.survey, args.address, t, Path(tmp))
            print(f"{t:18g} {wall:8.2f} {rc:5d}  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
