"""Small utilities shared by every sub-package: atomic writes and safe checkpoint loading."""

from dussss_monai.utils.io import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    safe_torch_load,
)

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "safe_torch_load",
    "ensure_writable_dir",
]
