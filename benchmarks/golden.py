"""Golden check: the products of this tree against those of another revision, bitwise.

Usage::

    python benchmarks/golden.py [--baseline-rev REV] [--n-stars 600] [--seed 7] [--keep DIR]
                                [--new-tree DIR]

Makes a temporary ``git worktree`` of ``REV`` (default: the merge-base of HEAD and
``main``), simulates one small default survey once (with the baseline's code), runs
``obpipe run`` on it with each revision's code (``PYTHONPATH`` pointing at each tree, the
short training of ``tests/small_run.FAST_LUMINOSITY_TOML``), then compares

- every array of every Zarr store under the products directory (values NaN-aware and
  bitwise, dtypes, shapes, attributes other than provenance),
- every column of every catalog file (Parquet, FITS, ECSV),
- every model file (safetensors, npz: every tensor / array bitwise; other files by bytes),

printing each difference. Exit status 1 on any difference, 0 when identical.
Provenance attributes (package version, git revision, timestamps, durations, paths) are
expected to differ and are not compared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: attribute / metadata keys that legitimately differ between two runs of equal code
VOLATILE = ("created", "time", "duration", "version", "git", "host", "pid", "seconds",
            "_utc", "path", "survey_store", "products_dir", "files", "elapsed", "started",
            "finished", "date", "timing")
#: keys that are volatile as a whole (the run's own products directory)
VOLATILE_KEYS = ("products", "survey")


def _sh(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:] + res.stderr[-4000:])
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}")
    return res.stdout


def _env(tree: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    return env


def _fast_toml(tree: Path) -> str:
    out = _sh([sys.executable, "-c", "from tests.small_run import FAST_LUMINOSITY_TOML as t;"
               "print(t)"], cwd=tree, env=_env(tree))
    return out


def _volatile(key: str) -> bool:
    k = key.lower()
    return k in VOLATILE_KEYS or any(v in k for v in VOLATILE)


def _json_diff(a: object, b: object, where: str = "") -> list[str]:
    """Paths (``/key[i]``) at which two cleaned JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}/{k}: only in one" for k in sorted(set(a) ^ set(b), key=str)]
        for k in sorted(set(a) & set(b), key=str):
            out += _json_diff(a[k], b[k], f"{where}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in _json_diff(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return []  # NaN in both (JSON NaN never equals itself)
    return [] if a == b else [f"{where}: {str(a)[:60]!r} vs {str(b)[:60]!r}"]


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a.view(np.uint8) if a.flags.c_contiguous else a.copy().view(
            np.uint8), b.view(np.uint8) if b.flags.c_contiguous else b.copy().view(np.uint8)))
    return bool(np.array_equal(a, b))


def _clean_attrs(attrs: object) -> object:
    """``attrs`` (nested dicts / lists, JSON text) without the volatile keys, recursively."""
    if isinstance(attrs, str) and attrs[:1] in "{[":
        try:
            return _clean_attrs(json.loads(attrs))
        except ValueError:
            return attrs
    if isinstance(attrs, dict):
        return {k: _clean_attrs(v) for k, v in attrs.items() if not _volatile(str(k))}
    if isinstance(attrs, list | tuple):
        return [_clean_attrs(v) for v in attrs]
    return attrs


def compare_zarr(a: Path, b: Path, diffs: list[str]) -> int:
    import zarr

    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    n = 0

    def walk(x, y, where: str) -> None:
        nonlocal n
        diffs.extend([f"{where}: attrs {d}" for d in _json_diff(_clean_attrs(dict(x.attrs)),
                                                             _clean_attrs(dict(y.attrs)))])
        ka = {k for k, _ in x.members()}
        kb = {k for k, _ in y.members()}
        for k in sorted(ka ^ kb):
            diffs.append(f"{where}/{k}: only in {'baseline' if k in ka else 'new'}")
        for k in sorted(ka & kb):
            mx, my = x[k], y[k]
            path = f"{where}/{k}"
            if isinstance(mx, zarr.Group) != isinstance(my, zarr.Group):
                diffs.append(f"{path}: group vs array")
            elif isinstance(mx, zarr.Group):
                walk(mx, my, path)
            else:
                n += 1
                va, vb = mx[...], my[...]
                va, vb = np.asarray(va), np.asarray(vb)
                if va.dtype != vb.dtype:
                    diffs.append(f"{path}: dtype {va.dtype} vs {vb.dtype}")
                elif va.shape != vb.shape:
                    diffs.append(f"{path}: shape {va.shape} vs {vb.shape}")
                elif not _same_array(va, vb):
                    bad = int(np.sum(~((va == vb) | ((va != va) & (vb != vb))))) \
                        if va.dtype.kind in "fc" else int(np.sum(va != vb))
                    diffs.append(f"{path}: {bad} of {va.size} values differ")
                diffs.extend([f"{path}: attrs {d}" for d in _json_diff(
                    _clean_attrs(dict(mx.attrs)), _clean_attrs(dict(my.attrs)))])

    walk(ga, gb, a.name)
    return n


def _columns_of(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".parquet" or path.is_dir():
        import pyarrow.parquet as pq

        t = pq.read_table(str(path))
        return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}
    from astropy.table import Table

    t = Table.read(str(path), format="fits" if path.suffix == ".fits" else "ascii.ecsv")
    return {c: np.asarray(t[c]) for c in t.colnames}


def compare_table(a: Path, b: Path, diffs: list[str]) -> int:
    ca, cb = _columns_of(a), _columns_of(b)
    if list(ca) != list(cb):
        diffs.append(f"{a.name}: columns {list(ca)} vs {list(cb)}")
    for c in ca:
        if c not in cb:
            continue
        va, vb = ca[c], cb[c]
        if va.dtype == object or vb.dtype == object:
            if va.shape != vb.shape or any(str(x) != str(y) for x, y in zip(va, vb, strict=True)):
                diffs.append(f"{a.name}:{c}: values differ")
        elif va.dtype != vb.dtype:
            diffs.append(f"{a.name}:{c}: dtype {va.dtype} vs {vb.dtype}")
        elif not _same_array(np.ascontiguousarray(va), np.ascontiguousarray(vb)):
            diffs.append(f"{a.name}:{c}: values differ")
    return len(ca)


def compare_model(a: Path, b: Path, diffs: list[str]) -> None:
    if a.suffix == ".npz":
        with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
            if sorted(za.files) != sorted(zb.files):
                diffs.append(f"{a.name}: arrays {sorted(za.files)} vs {sorted(zb.files)}")
            for k in za.files:
                if k not in zb.files:
                    continue
                if za[k].dtype.kind in "US" and za[k].ndim == 0:  # JSON metadata
                    diffs += [f"{a.name}:{k}{d}" for d in _json_diff(
                        _clean_attrs(str(za[k])), _clean_attrs(str(zb[k])))]
                elif not _same_array(za[k], zb[k]):
                    diffs.append(f"{a.name}:{k}: values differ")
    elif a.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.numpy import load_file

        with safe_open(str(a), framework="numpy") as fa, \
                safe_open(str(b), framework="numpy") as fb:
            diffs += [f"{a.name}: header {d}" for d in _json_diff(
                _clean_attrs(fa.metadata() or {}), _clean_attrs(fb.metadata() or {}))]
        ta, tb = load_file(str(a)), load_file(str(b))
        if sorted(ta) != sorted(tb):
            diffs.append(f"{a.name}: tensors {sorted(ta)} vs {sorted(tb)}")
        for k in ta:
            if k in tb and not _same_array(ta[k], tb[k]):
                diffs.append(f"{a.name}:{k}: values differ")
    elif a.suffix == ".json":
        ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
        diffs += [f"{a.name}: {d}" for d in _json_diff(_clean_attrs(ja), _clean_attrs(jb))]
    elif a.read_bytes() != b.read_bytes():
        diffs.append(f"{a.name}: bytes differ")


def compare_products(a: Path, b: Path) -> list[str]:
    diffs: list[str] = []
    fa = {p.relative_to(a) for p in a.iterdir()}
    fb = {p.relative_to(b) for p in b.iterdir()}
    for p in sorted(fa ^ fb):
        diffs.append(f"{p}: only in {'baseline' if p in fa else 'new'}")
    n_arrays = n_cols = n_models = 0
    for rel in sorted(fa & fb):
        pa, pb = a / rel, b / rel
        if rel.name.endswith(".zarr"):
            n_arrays += compare_zarr(pa, pb, diffs)
        elif rel.suffix in (".parquet", ".fits", ".ecsv"):
            n_cols += compare_table(pa, pb, diffs)
        elif pa.is_dir():
            sub = compare_products(pa, pb)
            diffs += [f"{rel}/{d}" for d in sub]
        elif rel.suffix in (".npz", ".safetensors", ".json", ".pt"):
            n_models += 1
            compare_model(pa, pb, diffs)
        elif rel.name.endswith(".lock") or rel.suffix in (".log", ".html", ".png"):
            continue
        else:
            n_models += 1
            compare_model(pa, pb, diffs)
    print(f"compared {a}: {n_arrays} arrays, {n_cols} table columns, {n_models} other files")
    return diffs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-rev", default=None,
                    help="git revision of the baseline (default: merge-base of HEAD and main)")
    ap.add_argument("--n-stars", type=int, default=600)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", default=None, help="work directory to keep (default: temporary)")
    ap.add_argument("--new-tree", default=None,
                    help="the source tree to compare (default: this working tree); e.g. an "
                    "export of the baseline with only your own changes applied, when others "
                    "edit the working tree at the same time")
    args = ap.parse_args(argv)
    rev = args.baseline_rev or _sh(["git", "merge-base", "HEAD", "main"], cwd=REPO).strip()
    rev = _sh(["git", "rev-parse", rev], cwd=REPO).strip()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="golden-"))
    work.mkdir(parents=True, exist_ok=True)
    base_tree = work / "baseline"
    if not base_tree.exists():
        _sh(["git", "worktree", "add", "--detach", str(base_tree), rev], cwd=REPO)
    try:
        survey = work / "survey.zarr"
        if not survey.exists():
            _sh([sys.executable, "-m", "obpipe.cli", "simulate", "--n-stars",
                 str(args.n_stars), "--seed", str(args.seed), "--out", str(survey),
                 "--scheduler", "threads"], cwd=base_tree, env=_env(base_tree))
        toml = work / "fast.toml"
        new_tree = Path(args.new_tree).resolve() if args.new_tree else REPO
        toml.write_text(_fast_toml(new_tree))
        out = {}
        for name, tree in (("baseline", base_tree), ("new", new_tree)):
            out[name] = work / f"products-{name}"
            if not out[name].exists():
                _sh([sys.executable, "-m", "obpipe.cli", "run", str(survey), "--out",
                     str(out[name]), "--config", str(toml)], cwd=work, env=_env(tree))
            print(f"{name}: {rev[:10] if name == 'baseline' else str(new_tree)} -> "
                  f"{out[name]}")
        diffs = compare_products(out["baseline"], out["new"])
    finally:
        if not args.keep:
            _sh(["git", "worktree", "remove", "--force", str(base_tree)], cwd=REPO)
    for d in diffs:
        print("DIFF", d)
    print(f"golden: {len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
