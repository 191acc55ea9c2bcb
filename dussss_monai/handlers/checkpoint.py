"""Safe checkpoint loading (and a note on atomic saving) for Ignite/MONAI engines.

Loading: :class:`SafeCheckpointLoader` is a drop-in for :class:`monai.handlers.CheckpointLoader` that reads the
file with :func:`dussss_monai.utils.safe_torch_load` (``weights_only=True``): a checkpoint carrying arbitrary
pickled objects is refused with :class:`~dussss_monai.errors.CheckpointError` instead of being unpickled, and
a missing, truncated or incompatible file is reported as a ``CheckpointError`` naming the file. With
``skip_if_missing=True`` a missing file is only logged, so a bundle config key ``resume`` may always point at
"the last checkpoint", present or not.

Saving: Ignite's :class:`~ignite.handlers.DiskSaver` writes atomically by default (``atomic=True``: temporary
file, then rename), but MONAI's :class:`~monai.handlers.CheckpointSaver` (1.6) builds its DiskSavers with
``atomic=False`` (to keep group/other read permissions), i.e. it writes the destination file in place. A crash
or a full disk during a save then leaves a truncated file, and with a fixed ``key_metric_filename`` (the
best model, ``model.pt``) it destroys the previous good one. :class:`AtomicCheckpointSaver` is
``CheckpointSaver`` with every save going through :func:`dussss_monai.utils.atomic_torch_save` (temporary file
in the same folder, fsync, ``os.replace``) and the same read permissions. :func:`save_atomic` gives the same
guarantee for code outside an engine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
import torch
from ignite.engine import Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver

from dussss_monai.errors import CheckpointError
from dussss_monai.utils.io import atomic_torch_save, safe_torch_load, state_dict_mismatch

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["SafeCheckpointLoader", "AtomicCheckpointSaver", "AtomicDiskSaver", "save_atomic"]


class SafeCheckpointLoader:
    """Ignite handler that restores objects from a checkpoint loaded with ``weights_only=True``.

    Attach it like MONAI's ``CheckpointLoader`` (it runs on ``Events.STARTED``) or call it on an engine.
    The trainer's iteration and epoch counts are restored when ``load_dict`` holds the engine (key
    ``"trainer"`` by convention); the engine's configured ``max_epochs`` is kept, so a resumed run trains up to
    the new ``max_epochs``.

    Args:
        load_path: checkpoint file (``.pt``), e.g. written by ``CheckpointSaver`` with the same ``load_dict``.
        load_dict: objects with ``load_state_dict`` to restore, keyed as in the checkpoint, e.g.
            ``{"network": net, "teacher": trainer.teacher, "optimizer": opt, "trainer": trainer}``.
        strict: passed to ``load_state_dict`` of modules (missing/unexpected keys are errors).
        map_location: passed to ``torch.load`` (default ``"cpu"``; the objects move tensors to their device).
        skip_if_missing: when the file does not exist, log and continue instead of raising. A ``load_path`` of
            ``None`` or ``""`` always means "nothing to resume" and is skipped (a bundle config can write
            ``"load_path": "$latest_checkpoint(...) if @resume else None"``).
        name: logger name; ``None`` uses the engine's logger when attached.

    Raises:
        CheckpointError: when ``load_dict`` is empty.
    """

    def __init__(
        self,
        load_path: str | os.PathLike | None,
        load_dict: Mapping[str, Any],
        strict: bool = True,
        map_location: str | torch.device | dict | None = "cpu",
        skip_if_missing: bool = False,
        name: str | None = None,
    ) -> None:
        if not load_dict:
            raise CheckpointError("SafeCheckpointLoader: load_dict is empty, nothing to restore")
        self.load_path = None if load_path in (None, "") else Path(load_path)
        self.load_dict = dict(load_dict)
        self.strict = bool(strict)
        self.map_location = map_location
        self.skip_if_missing = bool(skip_if_missing)
        self._name = name
        self.logger = logging.getLogger(name or __name__)

    def attach(self, engine: Engine) -> None:
        """Run this loader when ``engine`` starts."""
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> bool:
        """Load the checkpoint into ``load_dict``.

        Args:
            engine: the engine whose ``max_epochs`` is preserved (may be ``None`` when called by hand).

        Returns:
            ``True`` when a checkpoint was loaded, ``False`` when it was missing and skipped.

        Raises:
            CheckpointError: missing file (unless ``skip_if_missing``), unsafe or unreadable file, keys of
                ``load_dict`` absent from the checkpoint, incompatible state dicts, or a checkpoint epoch
                beyond the engine's ``max_epochs``.
        """
        if self.load_path is None:
            self.logger.info("no checkpoint to resume from (load_path is None), starting from scratch")
            return False
        if not self.load_path.is_file():
            if self.skip_if_missing:
                self.logger.info(f"no checkpoint at {self.load_path}, starting from scratch")
                return False
            raise CheckpointError(f"checkpoint {self.load_path} does not exist")
        checkpoint = safe_torch_load(self.load_path, map_location=self.map_location)
        if not isinstance(checkpoint, Mapping):
            raise CheckpointError(f"checkpoint {self.load_path} is not a dictionary of state dicts")
        first = next(iter(self.load_dict))
        if len(self.load_dict) == 1 and first not in checkpoint:
            checkpoint = {first: checkpoint}  # a bare state dict for a single object, as MONAI accepts
        missing = [k for k in self.load_dict if k not in checkpoint]
        if missing:
            raise CheckpointError(f"checkpoint {self.load_path} lacks {missing}; it holds {sorted(checkpoint)}")
        prior_max_epochs = engine.state.max_epochs if engine is not None else None
        try:
            Checkpoint.load_objects(to_load=self.load_dict, checkpoint=dict(checkpoint), strict=self.strict)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"checkpoint {self.load_path} does not fit the objects to restore ({state_dict_mismatch(e)}); "
                "was it written by a run with other settings?"
            ) from e
        if engine is not None and prior_max_epochs is not None:
            if engine.state.epoch > prior_max_epochs:
                raise CheckpointError(
                    f"checkpoint {self.load_path} is at epoch {engine.state.epoch}, beyond max_epochs={prior_max_epochs}; "
                    "raise max_epochs to continue training"
                )
            engine.state.max_epochs = prior_max_epochs
        self.logger.info(f"restored {sorted(self.load_dict)} from {self.load_path}")
        return True


def save_atomic(save_dict: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Save ``{key: obj.state_dict()}`` (or ``obj`` itself when it has no ``state_dict``) atomically.

    The file is loadable by :class:`SafeCheckpointLoader` with the same keys. Objects must hold only tensors
    and plain containers (what ``weights_only=True`` accepts).

    Returns:
        the destination path.
    """
    state = {k: (v.state_dict() if hasattr(v, "state_dict") else v) for k, v in save_dict.items()}
    return atomic_torch_save(state, path)


class AtomicDiskSaver(BaseSaveHandler):
    """Ignite save handler writing each checkpoint atomically and removing old files only after a good save.

    Each file is written with :func:`dussss_monai.utils.atomic_torch_save` (temporary file in the folder,
    fsync, ``os.replace``) and made readable by group/others, as MONAI's saver does. Ignite's
    :class:`~ignite.handlers.Checkpoint` asks its handler to remove the outdated file *before* writing the new
    one; this handler defers those removals until the next save has succeeded, and ignores removals of the
    very file about to be replaced (a fixed ``filename``). A crash or a full disk during a save therefore
    always leaves the previous checkpoint intact.

    Args:
        dirname: destination folder (created if needed).
        filename: fixed file name overriding the one Ignite proposes (as MONAI's saver does for
            ``final_filename`` / ``key_metric_filename``); ``None`` keeps Ignite's name.
        save_on_rank: only this rank writes (distributed training).
        keep_last: after each save, keep only this many files of the same series in the folder (the same name up
            to its last ``_``, e.g. ``training_checkpoint_epoch=*.pt``), the newest; this also removes the files an
            earlier attempt of the run left, which Ignite does not know of. ``None``: Ignite's ``n_saved`` only.
    """

    def __init__(
        self,
        dirname: str | os.PathLike,
        filename: str | None = None,
        save_on_rank: int = 0,
        keep_last: int | None = None,
    ) -> None:
        self.dirname = Path(dirname)
        self.filename = filename
        self.save_on_rank = int(save_on_rank)
        self.keep_last = keep_last
        self._pending_removals: list[Path] = []

    def _path(self, filename: str) -> Path:
        return self.dirname / (self.filename or filename)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        path = atomic_torch_save(checkpoint, self._path(filename))
        pending, self._pending_removals = self._pending_removals, []
        if self.keep_last is not None and self.filename is None and "_" in path.stem:
            series = sorted(
                (f for f in self.dirname.glob(path.stem.rsplit("_", 1)[0] + "_*" + path.suffix) if f.is_file()),
                key=lambda f: (f.stat().st_mtime, f.name),
            )
            pending += series[: max(len(series) - self.keep_last, 0)]
        for old in pending:
            if old != path:
                try:
                    os.remove(old)
                except FileNotFoundError:
                    pass

    def remove(self, filename: str) -> None:
        """Schedule ``filename`` for removal after the next successful save."""
        if idist.get_rank() == self.save_on_rank:
            self._pending_removals.append(self._path(filename))


class AtomicCheckpointSaver(CheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` whose every save is atomic (see the module docstring).

    Same arguments and behaviour as ``CheckpointSaver`` (``save_final``, ``save_key_metric`` with a fixed
    ``key_metric_filename``, ``save_interval``, ``n_saved``, ...); only the file writing differs, and the interval
    checkpoints of earlier attempts of a resumed run are pruned with the others (only ``n_saved`` of them stay). Use
    it in bundle configs (``"_target_": "dussss_monai.handlers.AtomicCheckpointSaver"``) for the training
    checkpoints and the best model, so that an interrupted save never replaces a good file by a truncated one.
    """

    _CHECKPOINTS = ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint")

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        replaced = 0
        for attr in self._CHECKPOINTS:
            checkpoint = getattr(self, attr, None)
            if checkpoint is not None:
                fixed = getattr(checkpoint.save_handler, "filename", None)
                keep = int(kwargs.get("n_saved", 1) or 1) if attr == "_interval_checkpoint" else None
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, filename=fixed, keep_last=keep)
                replaced += 1
        if replaced == 0 and any(kwargs.get(k) for k in ("save_final", "save_key_metric", "save_interval")):
            raise CheckpointError(  # pragma: no cover - guards against a MONAI refactoring
                "AtomicCheckpointSaver: this MONAI version's CheckpointSaver has no checkpoints to make atomic"
            )
