"""Provenance: what a stage's products and a model file were made from.

* The survey's identity (:func:`survey_identity`): the store's own id (its producer,
  creation time and producing configuration) plus a BLAKE2b checksum of its
  per-spectrum table (every 1-D variable on ``spec``, in name order, as stored: its
  metadata and its chunks' bytes), and whether it is simulated (a ``truth`` group or the
  simulator as producer).
* A stage's key (:func:`stage_key`): a hash of its configuration section, the survey's
  id and the keys recorded by the stages it read. The engine (:mod:`obpipe.pipeline`)
  records the key with the stage's completion; a complete stage whose recorded key
  differs from the one the run would give is rerun, and so, through their keys, is
  everything downstream.
* Model files (PCA bases, networks, noise models) carry :func:`model_metadata`: the
  obpipe version and the training survey (identity, size, simulated or not), taken from
  :func:`training_survey`, which the engine sets for the duration of a stage.

No science here; stdlib, numpy, zarr / fsspec (the survey's stored bytes) and the store
helpers only.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from obpipe.version import __version__

#: the producer attribute of a simulated survey (obpipe.simulate.survey)
SIMULATED_PRODUCER = "obpipe simulate"
#: root attributes of the survey store that identify it (besides its table)
_STORE_ID_ATTRS = ("producer", "created_utc", "simulation_config", "ingest_config", "seed")


class ModelProvenanceError(ValueError):
    """A model file that must not be applied to this survey (e.g. trained on a mock)."""


def digest(obj: Any, size: int = 16) -> str:
    """Hex BLAKE2b of the canonical JSON of ``obj`` (sorted keys; numpy scalars and
    tuples as JSON numbers and lists)."""
    text = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=size).hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def table_checksum(survey_path: str) -> str:
    """BLAKE2b-128 of a store's per-spectrum table as stored: every array of its root
    group with dimensions ``("spec",)``, in name order, by its metadata (dtype, shape,
    fill value, codecs, attributes) and the bytes of each of its chunks as written
    (encoded: a different value gives different bytes; an absent chunk, all fill value,
    counts as absent). Nothing is decoded: ~0.1 s for 30,000 spectra, where reading the
    values through xarray took ~0.9 s. A copy of the store (elsewhere, or under a URL)
    has the same checksum; a store rewritten with other codecs or chunks has another."""
    import itertools

    import fsspec
    import zarr

    from obpipe.io import store

    group = zarr.open_group(survey_path, mode="r", zarr_format=store.ZARR_FORMAT)
    arrays = sorted((name, arr) for name, arr in group.arrays()
                    if tuple(arr.metadata.dimension_names or ()) == ("spec",))
    fs, root = fsspec.core.url_to_fs(survey_path)
    root = root.rstrip("/")
    h = hashlib.blake2b(digest_size=16)
    for name, arr in arrays:
        h.update(name.encode() + b"\0" + digest(arr.metadata.to_dict()).encode())
        keys = [arr.metadata.encode_chunk_key(c)
                for c in itertools.product(*(range(k) for k in arr.cdata_shape))]
        paths = [f"{root}/{arr.path}/{k}" for k in keys]
        raw = fs.cat(paths, on_error="omit") if paths else {}
        for key, path in zip(keys, paths, strict=True):
            chunk = raw.get(path)
            h.update(key.encode() + b"\0" + (b"absent" if chunk is None else
                                              len(chunk).to_bytes(8, "little") + chunk))
    return h.hexdigest()


def survey_identity(survey_path: str) -> dict[str, Any]:
    """The survey's identity: ``id`` (hash of the store id and the table checksum,
    :func:`table_checksum`), ``table_checksum``, ``n_spectra``, ``simulated``,
    ``producer``, ``created_utc`` and ``path`` (informative only: a survey moved
    elsewhere keeps its id). Reads the store's metadata and its table's stored bytes
    only (open and validate it with :func:`obpipe.io.store.open_cube`)."""
    import zarr

    from obpipe.io import store

    group = zarr.open_group(survey_path, mode="r", zarr_format=store.ZARR_FORMAT)
    attrs = dict(group.attrs)
    checksum = table_checksum(survey_path)
    store_id = {k: attrs.get(k) for k in _STORE_ID_ATTRS}
    simulated = attrs.get("producer") == SIMULATED_PRODUCER or store.TRUTH_GROUP in group
    return {"id": digest({"store": store_id, "table": checksum}),
            "table_checksum": checksum, "n_spectra": int(group["specid"].shape[0]),
            "simulated": bool(simulated), "producer": attrs.get("producer"),
            "created_utc": attrs.get("created_utc"), "path": store.absolute(survey_path)}


def stage_key(config_section: Any, survey_id: str, upstream: Mapping[str, str]) -> str:
    """The provenance key of a stage: its configuration section, the survey's id and the
    keys of the stages it read (name -> key)."""
    return digest({"config": config_section, "survey": survey_id,
                   "upstream": dict(sorted(upstream.items()))})


# ------------------------------------------------------------------ model files
_TRAINING: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "obpipe_training_survey", default=None)


@contextlib.contextmanager
def training_survey(identity: Mapping[str, Any] | None) -> Iterator[None]:
    """Within the block, model files written record ``identity`` as their training survey
    (set by the engine around each stage run)."""
    token = _TRAINING.set(None if identity is None else dict(identity))
    try:
        yield
    finally:
        _TRAINING.reset(token)


def model_metadata() -> dict[str, Any]:
    """What every model file records: ``obpipe_version`` and ``training_survey`` (the
    identity of the survey it was trained on, with its size and whether it was
    simulated; None when trained outside a pipeline run)."""
    ident = _TRAINING.get()
    keep = ("id", "table_checksum", "n_spectra", "simulated", "producer", "created_utc",
            "path")
    return {"obpipe_version": __version__,
            "training_survey": None if ident is None else {k: ident.get(k) for k in keep}}


def stamped(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` with :func:`model_metadata` (a training survey already recorded in
    ``meta`` is kept when none is set: a loaded model saved again)."""
    origin = model_metadata()
    if origin["training_survey"] is None and meta.get("training_survey"):
        origin["training_survey"] = meta["training_survey"]
    return {**meta, **origin}


def check_model_for_survey(meta: Mapping[str, Any], path: str,
                           survey: Mapping[str, Any], allow_simulated: bool) -> bool:
    """Refuse a model trained on a simulated survey for a real (not simulated) survey
    unless ``allow_simulated``; returns True if such a model is used (the catalog then
    says so). Models without a recorded training survey are treated as simulated for a
    real survey (their origin is unknown)."""
    trained = meta.get("training_survey")
    from_mock = trained is None or bool(trained.get("simulated", True))
    if not from_mock or survey.get("simulated", False):
        return False
    origin = ("was trained on a simulated survey "
              f"({trained.get('producer')}, {trained.get('n_spectra')} spectra)"
              if trained else "records no training survey (obpipe < 0.x or trained outside "
              "a pipeline run)")
    if not allow_simulated:
        raise ModelProvenanceError(
            f"{path} {origin}; the survey {survey.get('path')} is real. Train on real "
            "spectra (rerun without --models), or pass --allow-simulated-models to apply "
            "it anyway (the products and run_summary.json then list it)")
    return True


class ModelFileError(ValueError):
    """A model file that cannot be read (wrong format, inconsistent header, old torch
    file); the message names the file and what to do."""


#: first bytes of a ``torch.save`` file: a zip archive, or a bare pickle (legacy format)
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02\x8a\n")


def legacy_torch_message(path: str) -> str:
    return (f"{path}: a torch model file from obpipe < 0.2 (pickle-based .pt); networks "
            "are now stored as .safetensors. Retrain: `obpipe run SURVEY --out PRODUCTS "
            "--stages luminosity --force` (or delete the file and rerun)")


def model_file_metadata(path: str) -> dict[str, Any]:
    """The JSON metadata of a model file (``.npz`` PCA bases / noise model, or
    ``.safetensors`` network) without loading its arrays into a model."""
    from obpipe.io import store

    if path.endswith((".pt", ".safetensors")):
        return json.loads(read_safetensors(path)[1].get("meta_json", "{}"))
    with store.open_file(path, "rb") as fh:
        raw = fh.read()
    import io

    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            key = "meta_json" if "meta_json" in data.files else "meta"
            return json.loads(str(data[key])) if key in data.files else {}
    except (ValueError, OSError, KeyError) as exc:
        raise ModelFileError(f"{path}: not an obpipe .npz model file ({exc})") from exc


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, header metadata) of a ``.safetensors`` file (local path or fsspec URL,
    read through a local copy), with ``safetensors``' own checks of the header's dtypes,
    shapes and offsets: a file that fails them raises :class:`ModelFileError` naming it."""
    import tempfile

    from safetensors import SafetensorError, safe_open

    from obpipe.io import store

    with store.open_file(path, "rb") as fh:
        if fh.read(4) in _TORCH_MAGIC:
            raise ModelFileError(legacy_torch_message(path))
    with contextlib.ExitStack() as stack:
        local = path
        if store.is_url(path):
            tmp = stack.enter_context(tempfile.NamedTemporaryFile(suffix=".safetensors"))
            with store.open_file(path, "rb") as fh:
                tmp.write(fh.read())
            tmp.flush()
            local = tmp.name
        try:
            with safe_open(local, framework="numpy") as fh:
                meta = dict(fh.metadata() or {})
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelFileError(f"{path}: not a valid safetensors file ({exc})") from exc
    return tensors, meta


#: products root attribute that holds a stage's provenance record
RECORD_PREFIX = "provenance_"


def stage_records(attrs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Stage name -> provenance record, from a products store's root attributes."""
    return {k[len(RECORD_PREFIX):]: v for k, v in attrs.items()
            if k.startswith(RECORD_PREFIX) and isinstance(v, dict)}


def catalog_metadata(products_dir: str) -> dict[str, str]:
    """What a catalog file should carry about its making, as strings (Parquet schema
    metadata; FITS header keywords via ``HIERARCH`` or a COMMENT block): the run's
    effective configuration (JSON) and its :func:`digest`, the survey's identity (JSON)
    and its ``id``, each stage's provenance record and the simulated-survey models
    applied to a real survey (a JSON list; empty: none)."""
    import zarr

    from obpipe.engine.blockwise import products_path
    from obpipe.io import store

    attrs = dict(zarr.open_group(products_path(products_dir), mode="r",
                                 zarr_format=store.ZARR_FORMAT).attrs)
    records = stage_records(attrs)
    config = str(attrs.get("obpipe_config", "{}"))
    ident = attrs.get("survey_identity")
    return {"obpipe_version": __version__,
            "obpipe_config": config,
            "obpipe_config_digest": digest(json.loads(config)),
            "obpipe_survey_id": str((ident or {}).get("id", "")),
            "obpipe_survey": json.dumps(ident, sort_keys=True),
            "obpipe_provenance": json.dumps(records, sort_keys=True, default=_json_default),
            "obpipe_simulated_models": json.dumps(list(attrs.get("simulated_models", [])))}
