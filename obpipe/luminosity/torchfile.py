"""Read the tensors of a ``torch.save`` file into numpy, without importing torch.

A model file (:meth:`obpipe.luminosity.network.MKsNetwork.save`) is torch's zip
serialisation: ``<prefix>/data.pkl``, a pickle of a dict of tensors, strings and numbers
whose tensors are ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
calls on storages kept as raw bytes in ``<prefix>/data/<key>`` (``<prefix>/byteorder``
says their byte order). Inference only needs those arrays: reading them here spares
every inference run, and every Dask worker, the import of torch (~1.4 s and ~300 MB).

Like ``torch.load(weights_only=True)`` the unpickler is restricted: it resolves only the
tensor-rebuild function, the typed storage classes and ``collections.OrderedDict``, and
refuses any other global, so a file cannot run code. Files in another layout (torch's
legacy, pre-zip format) raise :class:`TorchFileError`; the caller falls back to torch.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from typing import Any

import numpy as np

#: torch's typed storage classes (the names a ``torch.save`` pickle refers to) -> dtype
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "ByteStorage": np.uint8, "CharStorage": np.int8, "ShortStorage": np.int16,
    "IntStorage": np.int32, "LongStorage": np.int64, "BoolStorage": np.bool_,
}


class TorchFileError(ValueError):
    """Not a torch zip file this reader understands."""


class _StorageType:
    """Stands for ``torch.<Name>Storage`` in the pickle (only its dtype is needed)."""

    def __init__(self, dtype: type) -> None:
        self.dtype = np.dtype(dtype)


def _rebuild_tensor_v2(storage: np.ndarray, storage_offset: int, size: tuple[int, ...],
                       stride: tuple[int, ...], *args: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` for a numpy storage: a strided view, copied."""
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=tuple(size),
                                           strides=tuple(s * item for s in stride))
    return np.array(view)


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh: io.BytesIO, archive: zipfile.ZipFile, prefix: str,
                 byteorder: str) -> None:
        super().__init__(fh)
        self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
        self._loaded: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a model file")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        key = str(pid[2])
        if key not in self._loaded:
            dtype = pid[1].dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            raw = self._archive.read(f"{self._prefix}/data/{key}")
            self._loaded[key] = np.frombuffer(raw, dtype=dtype).astype(pid[1].dtype,
                                                                       copy=False)
        return self._loaded[key]


def load_torch_file(fh: Any) -> dict[str, Any]:
    """The object a ``torch.save`` zip file holds, tensors as numpy arrays.

    ``fh``: a binary file object. Raises :class:`TorchFileError` for a file that is not
    such a zip archive, :class:`pickle.UnpicklingError` for a disallowed global."""
    data = fh.read()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise TorchFileError("not a torch zip file (legacy format?)") from exc
    with archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise TorchFileError("no data.pkl in the archive")
        prefix = pkl[0][: -len("/data.pkl")]
        names = set(archive.namelist())
        byteorder = (archive.read(f"{prefix}/byteorder").decode().strip()
                     if f"{prefix}/byteorder" in names else "little")
        return _Unpickler(io.BytesIO(archive.read(pkl[0])), archive, prefix,
                          byteorder).load()
