"""Load a torch.distributed.checkpoint (DCP) folder without running code from it (torch only).

``dcp.load(state, checkpoint_id=PATH)`` reads ``PATH/.metadata`` with plain ``pickle.load``
and every non-tensor entry (``BYTE_IO``: floats, ints, strings of a state dict) with
``torch.load(weights_only=False)``, so a crafted checkpoint folder runs code as soon as it is
loaded. ``SafeFileSystemReader`` is a drop-in ``FileSystemReader`` that

- unpickles ``.metadata`` with `pickle.Unpickler.find_class` limited to ALLOWED_GLOBALS
  (DCP's own metadata classes, ``torch.Size``, dtypes / layouts / memory formats and
  ``pathlib`` paths): anything else is a `DCPMetadataError` naming the file and the global,
  raised before the object is built;
- checks every ``BYTE_IO`` entry with ``torch.load(weights_only=True)`` (tensors and plain
  Python values only) before DCP's planner unpickles it; tensors are read by DCP with
  ``weights_only=True`` already.

Use it wherever ``dcp.load`` reads a folder you did not write yourself::

    from nexus_optim.optim.safe_dcp import SafeFileSystemReader
    dcp.load(state, storage_reader=SafeFileSystemReader("ckpt/step_6"))

`load_metadata(path)` returns the checked ``Metadata`` of a folder (or ``.metadata`` file).
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

__all__ = ["ALLOWED_GLOBALS", "DCPMetadataError", "SafeFileSystemReader", "load_metadata"]

_META_MODULE = "torch.distributed.checkpoint.metadata"

#: (module, name) a DCP ``.metadata`` pickle may reference; besides these, any class defined
#: in torch.distributed.checkpoint.metadata (its dataclasses and enums) and any torch dtype,
#: layout or memory format (``torch.float32``, ``torch.strided``, ...).
ALLOWED_GLOBALS = frozenset({
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
})


class DCPMetadataError(ValueError):
    """A DCP checkpoint refers to something outside the allow-list (or is not DCP metadata)."""


def _allowed(module: str, name: str) -> bool:
    if (module, name) in ALLOWED_GLOBALS:
        return True
    if module == _META_MODULE:
        import torch.distributed.checkpoint.metadata as meta

        obj = getattr(meta, name, None)
        return isinstance(obj, type) and obj.__module__ == _META_MODULE
    if module == "torch" and "." not in name:
        return isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format))
    return False


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, where: str):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if not _allowed(module, name):
            raise DCPMetadataError(
                f"{self.where}: refusing to load: the pickle references {module}.{name}, which is "
                "not part of DCP metadata (a crafted checkpoint could run code); allowed: DCP's "
                "metadata classes, torch.Size, dtypes and layouts")
        return super().find_class(module, name)


def _read_metadata(stream, where: str) -> Metadata:
    try:
        metadata = _MetadataUnpickler(stream, where).load()
    except DCPMetadataError:
        raise
    except Exception as e:  # a truncated / damaged pickle: one line naming the file
        raise DCPMetadataError(f"{where}: not a readable DCP .metadata ({type(e).__name__}: {e})") from None
    if not isinstance(metadata, Metadata):
        raise DCPMetadataError(f"{where}: holds a {type(metadata).__name__}, not DCP Metadata")
    return metadata


def load_metadata(path: str | os.PathLike) -> Metadata:
    """The ``Metadata`` of a DCP folder (or its ``.metadata`` file), read with the allow-list."""
    p = pathlib.Path(path)
    if p.is_dir():
        p = p / ".metadata"
    with open(p, "rb") as f:
        return _read_metadata(f, str(p))


class _WeightsOnlyBytes:
    """A load planner proxy: each ``BYTE_IO`` entry must load with ``weights_only=True``
    before the real planner (which unpickles it fully) sees it."""

    def __init__(self, planner: Any, where: str):
        self._planner, self._where = planner, where

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        data = value.read()
        try:
            torch.load(io.BytesIO(data), weights_only=True)
        except Exception as e:
            fqn = getattr(getattr(read_item, "dest_index", None), "fqn", "?")
            raise DCPMetadataError(
                f"{self._where}: refusing to load entry {fqn!r}: it holds objects other than tensors "
                f"and plain Python values ({' '.join(str(e).split())[:200]})") from None
        self._planner.load_bytes(read_item, io.BytesIO(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._planner, name)


class SafeFileSystemReader(FileSystemReader):
    """``FileSystemReader`` whose ``.metadata`` and non-tensor entries cannot run code."""

    def _metadata_path(self, rank: Any) -> Any:
        get = getattr(self, "_get_metadata_path", None)
        return get(rank) if get is not None else self.fs.concat_path(self.path, ".metadata")

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            metadata = _read_metadata(f, str(path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan: Any, planner: Any) -> Any:
        return super().read_data(plan, _WeightsOnlyBytes(planner, str(self.path)))
