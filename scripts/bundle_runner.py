"""Run MONAI bundle workflows in subprocesses, as a user would type them: the runner of ``make demo`` and of the
benchmark scripts (not part of the installed package).

Each command is printed before it runs, its output goes to a log file, and the lines worth seeing (validation
results, errors) are echoed to the console.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dussss_monai.errors import ConfigError, DuSSSError

__all__ = ["REPO_ROOT", "BUNDLES_DIR", "METHOD_LAYERS", "training_configs", "bundle_command", "run_bundle"]

#: the repository root (this file is ``<root>/scripts/bundle_runner.py``), so scripts run from any directory
REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"


#: each method's config layer over ``configs/train.json`` (which trains DuSSS by itself)
METHOD_LAYERS = {"dussss": (), "mean_teacher": ("mean_teacher.json",), "supervised": ("supervised.json",)}


def training_configs(configs: Path, method: str, *more: str) -> list[Path]:
    """The config files that train ``method`` with a bundle (``configs``: its ``configs`` folder): ``train.json``,
    the method's layer, then ``more`` layers (e.g. ``evaluate.json``).

    Raises:
        DuSSSError: for an unknown method.
    """
    if method not in METHOD_LAYERS:
        raise DuSSSError(f"unknown method {method!r}; choose from {', '.join(METHOD_LAYERS)}")
    return [configs / "train.json", *(configs / name for name in (*METHOD_LAYERS[method], *more))]


def parse_extra(items: Sequence[str], option: str = "--extra") -> dict[str, Any]:
    """``KEY=VALUE`` items as bundle overrides (VALUE parsed as JSON where it can be); ``option`` names the
    command-line option in the error.

    Raises:
        ConfigError: an item without ``=`` or without a key (a :class:`DuSSSError`).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"{option} expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _literal(value: object) -> str:
    """``value`` as a compact Python literal, the syntax python-fire parses (JSON's ``true`` / ``null`` it reads as
    the strings ``'true'`` / ``'null'``)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{_literal(k)}:{_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    return repr(value)


def _arg(value: object) -> str:
    """Format an override for ``python -m monai.bundle`` (python-fire parses the value).

    ``None`` becomes the config expression ``$None``: a plain ``None`` would be dropped by ``monai.bundle``. Lists
    and dicts become compact Python literals, so that the booleans and ``None`` inside them survive fire's parsing.
    """
    if value is None:
        return "$None"
    if isinstance(value, (list, tuple, dict)):
        return _literal(value)
    return str(value)


def bundle_command(config: Path | list[Path], run_id: str, overrides: Mapping[str, object]) -> list[str]:
    """The argument list of ``python -m monai.bundle run <run_id> --config_file <config> --key value ...``.

    Args:
        config: the bundle config file, or a list of them merged in order (e.g. train.json, evaluate.json).
        run_id: the workflow to run (``training``, ``evaluating`` ...).
        overrides: command-line overrides; lists and dicts are passed as compact Python literals.

    Returns:
        the command, starting with this interpreter (``sys.executable``).
    """
    files = str(config) if isinstance(config, Path) else json.dumps([str(c) for c in config])
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", files]
    for key, value in overrides.items():
        cmd += [f"--{key}", _arg(value)]
    return cmd


def run_bundle(
    config: Path | list[Path],
    run_id: str,
    overrides: dict[str, object],
    log_file: Path,
    env: dict[str, str] | None = None,
    echo: bool = True,
    dry_run: bool = False,
) -> float:
    """Run one bundle workflow in a subprocess, printing the command and teeing its output to ``log_file``
    with ``echo`` the validation results and errors are shown as they
    come, else only the command; with ``dry_run`` only the command is printed.

    Returns:
        the wall time in seconds.

    Raises:
        DuSSSError: when the workflow fails; the message names the log file and shows its last lines.
    """
    cmd = bundle_command(config, run_id, overrides)
    print("$ python " + shlex.join(cmd[1:]), flush=True)
    if dry_run:
        return 0.0
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log_file, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if echo and _is_progress(line):
                print("    " + line.rstrip(), flush=True)
        rc = proc.wait()
    if rc != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise DuSSSError(f"'{run_id}' with {config} failed (exit {rc}); full log: {log_file}\n" + "\n".join(tail))
    return time.time() - start


def _is_progress(line: str) -> bool:
    """Lines worth echoing to the console: per-epoch validation results and key messages."""
    return ("Metrics --" in line and ("val_mean_dice" in line or "recall_at_1" in line)) or "Error" in line
