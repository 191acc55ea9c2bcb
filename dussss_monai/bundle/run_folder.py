"""A run folder belongs to one run: a lock while it runs, a record of what it is, resume only of the same run.

:class:`RunFolder` is the first thing a training run does after its checks, and the only thing that writes there
before training starts:

1. **One run at a time.** It takes an exclusive lock (``filelock``: an OS lock, released by the kernel when the
   process ends, however it ends) on the run folder and on the folder of the best model. A second run started on
   either (as its run folder or as its model folder) is refused with a message naming the first (its process, host, start time and command, from
   ``.owner.json``). A lock left by a killed run is free again; its stale owner file is replaced.
2. **A new run never replaces an old one.** A folder holding a run with checkpoints, or a finished run, is refused
   for a new run (``--resume True`` continues it; another ``--run_name`` or ``--output_dir`` starts a new one).
   A folder whose run failed before its first checkpoint may be reused.
3. **Resume checks identity.** ``run.json`` records the settings that define the run (every setting that is not
   ``resumable``, :mod:`~dussss_monai.bundle.settings`) and the images of its split. Resuming with any of them
   changed is refused, each difference named; asking to resume where there is no checkpoint says so.
4. **The record tells the story.** ``run.json`` keeps every attempt (start, end, status: running, finished,
   failed with its error, interrupted); an attempt that fails is added to the record, it never replaces it.

It also publishes the split (``datalist.json`` and the split file) and the model record (``model.json``,
:mod:`~dussss_monai.bundle.model_record`), and runs the trainer (:meth:`RunFolder.run`) so that the outcome is
recorded whatever it is.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from dussss_monai.bundle.cli import current_config
from dussss_monai.bundle.model_record import write_model_record
from dussss_monai.bundle.run_record import environment_versions
from dussss_monai.bundle.settings import identity_keys
from dussss_monai.data.splits import write_split_files
from dussss_monai.errors import ConfigError, DuSSSError
from dussss_monai.utils.io import atomic_write_json, ensure_writable_dir

__all__ = ["RunFolder", "RECORD_NAME"]

logger = logging.getLogger(__name__)

RECORD_NAME = "run.json"
LOCK_NAME = ".lock"
OWNER_NAME = ".owner.json"
#: the settings whose identity is the split itself (compared through the images, not as written)
_DATA_SOURCE_KEYS = ("dataset_dir", "columns", "image_dir", "mask_dir")


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def _names(items: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted(str(it.get("name") or Path(str(it.get("image", ""))).name) for it in items)


def _data_identity(data: Mapping[str, Any]) -> dict[str, Any]:
    """What a split is, for comparison at resume: its mode and the names of its images per part."""
    parts = {part: _names(data.get(part, [])) for part in ("labeled", "unlabeled", "validation")}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return {"mode": data.get("split", {}).get("mode"), **{f"n_{k}": len(v) for k, v in parts.items()}, "digest": digest}


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


class RunFolder:
    """The folder of one training run (module docstring).

    Args:
        output_dir: the run folder (record, logs, split).
        ckpt_dir: the folder of the best model, locked too when it lies outside ``output_dir``.
        checkpoint_dir: the folder of the training checkpoints (``None``: the run keeps none, e.g. stage 1).
        resume: continue the run of ``output_dir`` from its latest checkpoint.
        main_process: this process writes (rank 0 of a multi-GPU run); the other ranks only read.
        model_file: the best model's file name in ``ckpt_dir`` (its record is written beside it).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        ckpt_dir: str | os.PathLike | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
        main_process: bool = True,
        model_file: str = "model.pt",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.resume = bool(resume)
        self.main_process = bool(main_process)
        self.model_file = model_file
        self.record_path = self.output_dir / RECORD_NAME
        self._locks: list[FileLock] = []
        self._record: dict[str, Any] | None = None

    # -- what is already there ------------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """The training checkpoints in ``checkpoint_dir``, oldest first."""
        if self.checkpoint_dir is None or not self.checkpoint_dir.is_dir():
            return []
        files = [f for f in self.checkpoint_dir.glob("*.pt") if f.is_file() and not f.name.startswith(".")]
        return sorted(files, key=lambda f: (f.stat().st_mtime, f.name))

    @property
    def resume_checkpoint(self) -> str | None:
        """The checkpoint a resumed run starts from (the latest), ``None`` for a new run."""
        files = self.checkpoints()
        return str(files[-1]) if self.resume and files else None

    def previous_record(self) -> dict[str, Any] | None:
        """The ``run.json`` already in the folder, ``None`` when there is none (or it is unreadable)."""
        try:
            record = json.loads(self.record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    @staticmethod
    def describe(record: Mapping[str, Any] | None) -> str:
        """One phrase about a recorded run: when it started, how its last attempt ended, its best score."""
        if not record:
            return "a run without a record"
        attempts = record.get("attempts") or [{}]
        last = attempts[-1]
        status = last.get("status", "unknown")
        if status == "running" and not _pid_alive(last.get("pid")):
            status = "interrupted"
        best = record.get("best_metric")
        score = f", best validation {best:.4f}" if isinstance(best, (int, float)) else ""
        return f"the run started {attempts[0].get('started', '?')} ({len(attempts)} attempt(s), last {status}{score})"

    # -- locking ---------------------------------------------------------------------------------------------------
    def _lock(self, folder: Path) -> None:
        ensure_writable_dir(folder)
        lock = FileLock(str(folder / LOCK_NAME), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            owner = self._owner(folder)
            raise ConfigError(
                f"{folder} is in use by another run ({owner}); wait for it to end, or give this run another "
                "folder: --run_name <name> (or --output_dir / --ckpt_dir)"
            ) from None
        stale = self._owner_record(folder)
        if stale and stale.get("pid") != os.getpid():
            logger.info("%s: the lock of an earlier run (pid %s) was free; taking it", folder, stale.get("pid"))
        atomic_write_json(
            folder / OWNER_NAME,
            {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "argv": list(sys.argv)},
        )
        self._locks.append(lock)

    @staticmethod
    def _owner_record(folder: Path) -> dict[str, Any] | None:
        try:
            owner = json.loads((folder / OWNER_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _owner(self, folder: Path) -> str:
        owner = self._owner_record(folder)
        if not owner:
            return "its owner is not recorded"
        command = " ".join(str(a) for a in owner.get("argv", [])[:12])
        return f"process {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}: {command}"

    def release(self) -> None:
        """Release the locks (they are released by the OS when the process ends in any case)."""
        for lock in self._locks:
            lock.release()
        self._locks = []

    # -- starting --------------------------------------------------------------------------------------------------
    def _check_new_run(self, previous: Mapping[str, Any] | None) -> None:
        finished = any(a.get("status") == "finished" for a in (previous or {}).get("attempts", []))
        if self.checkpoints() or finished:
            raise ConfigError(
                f"{self.output_dir} already holds {self.describe(previous)}. A new run never replaces it: resume it "
                "with --resume True, or start the new run in another folder with --run_name <name> "
                "(or --output_dir <folder>)"
            )

    def _check_resume(self, previous: Mapping[str, Any] | None, identity: Mapping[str, Any]) -> None:
        if not self.checkpoints():
            parent = self.output_dir.parent
            others = sorted(p.parent.name for p in parent.glob("*/" + RECORD_NAME) if p.parent != self.output_dir)
            others_text = f" (runs in {parent}: {', '.join(others)})" if others else ""
            where = self.checkpoint_dir or self.output_dir
            raise ConfigError(
                f"--resume True: nothing to resume in {self.output_dir}: no training checkpoint in {where}{others_text}. "
                "Start the run without --resume, or give the --run_name / --output_dir of the run to resume"
            )
        if previous is None or "identity" not in previous:
            raise ConfigError(
                f"--resume True: {self.record_path} is missing or unreadable, so it cannot be checked that this is the "
                "same run; start a new run in another folder (--run_name <name>)"
            )
        before, now = previous["identity"], identity
        differ = []
        for key in sorted(set(before["settings"]) | set(now["settings"])):
            old, new = before["settings"].get(key), now["settings"].get(key)
            if json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True):
                differ.append(f"{key}: {_show(old)} in the run, {_show(new)} now")
        old_data, new_data = before.get("data"), now.get("data")
        if old_data and new_data and old_data != new_data:
            counts = ", ".join(
                f"{k[2:]} {old_data.get(k)} -> {new_data.get(k)}"
                for k in ("n_labeled", "n_unlabeled", "n_validation")
                if old_data.get(k) != new_data.get(k)
            )
            differ.append(f"the images of the split differ ({counts or 'the same counts, other images'})")
        if differ:
            raise ConfigError(
                f"--resume True: {self.output_dir} holds another run than this command describes: {'; '.join(differ)}. "
                "Resume with the run's own settings, or start a new run in another folder (--run_name <name>)"
            )

    def _identity(self, data: Mapping[str, Any] | None, config: Mapping[str, Any] | None) -> dict[str, Any]:
        settings = {}
        if config is not None:
            for key in identity_keys(config):
                if key not in _DATA_SOURCE_KEYS:
                    settings[key] = json.loads(json.dumps(config[key], default=str))
        return {"settings": settings, "data": _data_identity(data) if data is not None else None}

    def start(
        self,
        data: Mapping[str, Any] | None = None,
        model_settings: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        **facts: Any,
    ) -> RunFolder:
        """Take the folder for this run: lock it, check it may start here, and write its record and split.

        Args:
            data: the run's split (:func:`~dussss_monai.data.splits.read_training_data`), published as
                ``datalist.json`` and the split file.
            model_settings: the network settings recorded beside the best model
                (:func:`~dussss_monai.bundle.model_record.write_model_record`).
            config: the run's configuration, unevaluated (default: the running bundle's,
                :func:`~dussss_monai.bundle.cli.current_config`); its settings define the run.
            facts: other facts for ``run.json`` (``method``, ``stage``, ...).

        Returns:
            ``self``.

        Raises:
            ConfigError: the folder is in use, holds another run, or there is nothing to resume, or the run to
                resume differs (each difference named). Nothing is written then.
        """
        config = current_config() if config is None else config
        identity = self._identity(data, config)
        if not self.main_process:
            return self
        try:
            self._lock(self.output_dir)
            if self.ckpt_dir is not None and self.ckpt_dir.resolve() != self.output_dir.resolve():
                self._lock(self.ckpt_dir)  # also inside output_dir: another run may name it as its own ckpt_dir
            previous = self.previous_record()
            if self.resume:
                self._check_resume(previous, identity)
            else:
                self._check_new_run(previous)
        except BaseException:
            self.release()
            raise
        attempt = {"started": _now(), "status": "running", "pid": os.getpid(), "host": socket.gethostname()}
        attempt["argv"] = list(sys.argv)
        if self.resume and previous is not None:
            record = dict(previous)
            record["attempts"] = [*previous.get("attempts", []), attempt]
            record["resumed_from"] = self.resume_checkpoint
        else:
            record = {
                "identity": identity,
                **{k: json.loads(json.dumps(v, default=str)) for k, v in facts.items()},
                "split": dict(data["split"]) if data is not None else None,
                "attempts": [attempt],
            }
        record["status"] = "running"
        record["versions"] = environment_versions()
        record["config"] = json.loads(json.dumps(config, default=str)) if config is not None else None
        self._record = record
        if data is not None:
            split = data["split"]
            logger.info(
                "data: %d labeled, %d unlabeled, %d validation images (%s)",
                split["n_labeled"],
                split["n_unlabeled"],
                split["n_validation"],
                "as the data marks them" if split["mode"] == "given" else f"labeled_ratio {split['labeled_ratio']:g}",
            )
            for line in split["summary"]:
                logger.info("  %s", line)
            write_split_files(data, self.output_dir)
        if model_settings is not None and self.ckpt_dir is not None:
            write_model_record(self.ckpt_dir / self.model_file, model_settings)
        self._write()
        return self

    def _write(self) -> None:
        if self._record is not None and self.main_process:
            atomic_write_json(self.record_path, self._record)

    # -- running ---------------------------------------------------------------------------------------------------
    def finish(self, status: str, best_metric: float | None = None, error: str | None = None) -> None:
        """Record how the current attempt ended (``finished``, ``failed`` or ``interrupted``)."""
        if self._record is None:
            return
        attempt = self._record["attempts"][-1]
        attempt.update({"ended": _now(), "status": status})
        if error:
            attempt["error"] = error
        if best_metric is not None:
            before = self._record.get("best_metric")
            self._record["best_metric"] = (
                max(float(best_metric), before) if isinstance(before, float) else float(best_metric)
            )
        self._record["status"] = status
        self._write()

    def run(self, trainer: Any, evaluator: Any = None) -> None:
        """Run ``trainer`` and record the outcome in ``run.json`` (finished, failed with its error, interrupted).

        Args:
            trainer: an Ignite engine (the stage-1 or stage-2 trainer).
            evaluator: the validation engine, whose best key metric is recorded.

        Raises:
            whatever the training raises, after recording it.
        """

        def best() -> float | None:
            state = getattr(evaluator, "state", None)
            value = getattr(state, "best_metric", None)
            return float(value) if isinstance(value, (int, float)) and value != -1 else None

        try:
            trainer.run()
        except KeyboardInterrupt:
            self.finish("interrupted", best())
            raise
        except BaseException as e:
            ours = str(e).splitlines()[0] if isinstance(e, DuSSSError) and str(e) else f"{type(e).__name__}: {e}"
            self.finish("failed", best(), error=ours[:500])
            raise
        self.finish("finished", best())
