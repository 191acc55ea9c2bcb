"""Atomic file writing and safe checkpoint loading.

Every file this project writes (checkpoints, datalists, splits, reports) goes through these helpers:
the content is written to a temporary file in the destination folder, flushed to disk, then renamed
over the destination with :func:`os.replace`, which is atomic on POSIX and Windows. A crash or a full
disk therefore never leaves a truncated file that a later run would load.

Checkpoints are read with ``torch.load(..., weights_only=True)``: a file that carries arbitrary pickled
objects (which could execute code when unpickled) is refused with :class:`~dussss_monai.errors.CheckpointError`.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from dussss_monai.errors import CheckpointError, DuSSSError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "safe_torch_load",
    "state_dict_mismatch",
    "ensure_writable_dir",
]

PathLike = str | os.PathLike


def ensure_writable_dir(path: PathLike) -> Path:
    """Create ``path`` (and parents) if needed and check that files can be created in it.

    Raises:
        DuSSSError: when the folder cannot be created or is not writable, naming the folder.
    """
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DuSSSError(f"cannot create output folder {p}: {e.strerror or e}") from e
    if not os.access(p, os.W_OK | os.X_OK):
        raise DuSSSError(f"output folder {p} is not writable")
    return p


def _umask() -> int:
    """The process's file-creation mask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    The file gets the permissions a plain ``open(path, "w")`` would give it (``0o666`` less the user's umask), not
    the private ``0o600`` of a temporary file, so that a lab's group can read what a run writes.

    Returns:
        the destination path.

    Raises:
        DuSSSError: when the folder is not writable or the disk is full; no partial file is left.
    """
    dest = Path(path)
    ensure_writable_dir(dest.parent if str(dest.parent) else ".")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except OSError as e:
        _remove_quietly(tmp)
        raise DuSSSError(f"could not write {dest}: {e.strerror or e}") from e
    except BaseException:
        _remove_quietly(tmp)
        raise
    return dest


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically. See :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2) -> Path:
    """Serialise ``obj`` as JSON and write it to ``path`` atomically. See :func:`atomic_write_bytes`."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically. See :func:`atomic_write_bytes`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def safe_torch_load(path: PathLike, map_location: str | torch.device | dict | None = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``.

    Args:
        path: checkpoint file.
        map_location: passed to :func:`torch.load`.

    Returns:
        the loaded object (tensors, dicts, lists, numbers and strings only).

    Raises:
        CheckpointError: when the file is missing, truncated or not a checkpoint, or when it carries
            pickled objects other than tensors and plain containers (refused as unsafe).
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if p.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {p} is empty (0 bytes): the save that wrote it did not finish. Delete it (a resumed run then "
            "starts from the checkpoint before it) or point at another file"
        )
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... depending on the damage
        msg = str(e)
        if "weights_only" in msg or "Unsupported global" in msg or "WeightsUnpickler" in msg:
            raise CheckpointError(
                f"checkpoint {p} carries pickled Python objects besides tensors and was refused as unsafe "
                "(it could execute code when loaded). Re-save it as a plain state dict, or load it yourself "
                "only if you trust its source."
            ) from e
        first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {p} is unreadable (truncated or not a PyTorch file): {first}") from e


def state_dict_mismatch(error: BaseException) -> str:
    """One line summing up why ``load_state_dict`` refused a checkpoint (torch lists every tensor on its own line):
    the counts of size mismatches, missing and unexpected keys, and the first of them."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    sizes = [ln for ln in lines if ln.startswith("size mismatch for")]
    parts = []
    if sizes:
        parts.append(f"{len(sizes)} tensor(s) of another shape, e.g. {sizes[0].rstrip('.')}")
    for label, prefix in (("missing", "Missing key(s)"), ("unexpected", "Unexpected key(s)")):
        found = [ln for ln in lines if ln.startswith(prefix)]
        if found:
            keys = found[0].split(":", 1)[-1].strip().rstrip(".").split(", ")
            parts.append(f"{len(keys)} {label} key(s), e.g. {keys[0]}")
    if parts:
        return "; ".join(parts)
    return lines[0] if lines else type(error).__name__


def _remove_quietly(path: PathLike) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
