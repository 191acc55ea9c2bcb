"""The ``python -m monai.bundle`` command line as our configs see it: the bundle folder and config files it names,
the overrides it would drop or misread without a word, and how our errors reach the user.

MONAI wraps every exception raised while a config is evaluated in ``RuntimeError: Failed to evaluate ...``, so a
user's mistake would end a page of traceback on MONAI's words. :func:`prepare_run` (the first step of every
workflow of our bundles) and the ``dussss`` console command (:mod:`dussss_monai.bundle.console`) install an
exception hook that prints an error of ours (:class:`~dussss_monai.errors.DuSSSError`) as its message alone, the
file or setting and the fix last; ``DUSSS_TRACEBACK=1`` shows the whole traceback above it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from dussss_monai.errors import ConfigError, DuSSSError

__all__ = [
    "bundle_root",
    "config_path",
    "prepare_run",
    "check_command_line",
    "config_from_command_line",
    "install_error_hook",
    "our_error",
]

logger = logging.getLogger(__name__)


def _config_files(argv: Sequence[str]) -> list[str]:
    """The ``--config_file`` value(s) of a command line, in order (a list, or a comma-separated value, or one)."""
    config = None
    for i, a in enumerate(argv):
        if a == "--config_file" and i + 1 < len(argv):
            config = argv[i + 1]
        elif a.startswith("--config_file="):
            config = a.split("=", 1)[1]
    if not config:
        return []
    config = config.strip()
    if config.startswith("["):
        try:
            return [str(c) for c in json.loads(config.replace("'", '"'))]
        except ValueError:
            return []
    return [c for c in config.split(",") if c]


def config_path(name: str, default_folder: str = "configs", argv: Sequence[str] | None = None) -> str:
    """The path of the bundle config ``name`` next to the config file given on the command line (e.g. the
    ``pretrain.json`` of the ``train.json`` being run), for messages that tell the user which command to type.

    Args:
        name: a config file name, e.g. ``"pretrain.json"``.
        default_folder: the folder used when the command line names no config file.
        argv: the command line, ``sys.argv`` when ``None``.
    """
    files = _config_files(list(sys.argv if argv is None else argv))
    folder = Path(files[0]).parent if files else Path(default_folder)
    return str(folder / name)


def bundle_root(default: str = ".", argv: Sequence[str] | None = None) -> str:
    """Return the bundle folder of the config file given on the command line.

    ``python -m monai.bundle run training --config_file bundles/x/configs/train.json`` yields
    ``bundles/x``, so a bundle can be run from any working directory. Where no ``--config_file`` is on
    the command line (e.g. a bundle run from Python), ``default`` is returned; override ``bundle_root``
    explicitly in that case.

    Args:
        default: returned when the command line names no config file.
        argv: the command line to read, ``sys.argv`` when ``None``.

    Returns:
        the bundle root folder as a string.
    """
    files = _config_files(list(sys.argv if argv is None else argv))
    if not files:
        return default
    folder = Path(files[0]).resolve().parent  # a list of config files: the first one's bundle
    return str(folder.parent if folder.name == "configs" else folder)


def _command_line_overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
    """``(key, value as typed)`` of every ``--key value`` / ``--key=value`` of a ``monai.bundle`` command line."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            key, has_eq, value = a[2:].partition("=")
            if not has_eq:
                value = argv[i + 1] if i + 1 < len(argv) else "True"
                i += 1
            pairs.append((key, value))
        i += 1
    return pairs


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Refuse overrides that ``python -m monai.bundle`` would drop or misread without a word.

    Two spellings look right and are not:

    - ``--key None``: python-fire turns it into Python ``None``, and ``monai.bundle`` ignores every override
      whose value is ``None`` (``update_kwargs(ignore_none=True)``), so the config's own value would be used
      while the user believes it was replaced (``--pseudo_label_threshold None`` would train on hard labels).
    - ``--key false`` / ``true`` / ``null`` (JSON's spelling, as in the config files): python-fire reads them as
      the *strings* ``"false"``, ``"true"``, ``"null"``, and the string ``"false"`` is true in Python, so
      ``--use_text_loss false`` would leave L_text on.

    The bundle configs call this first in ``initialize``. A command line without ``--config_file`` (a bundle
    run from Python) is not checked.

    Args:
        argv: the command line, ``sys.argv`` when ``None``.

    Raises:
        ConfigError: naming each such override and the spelling that works: ``--key '$None'`` (a config
            expression that evaluates to ``None``), ``--key False`` / ``--key True``.
    """
    from fire.parser import DefaultParseValue

    pairs = _command_line_overrides(list(sys.argv if argv is None else argv))
    if not any(key == "config_file" for key, _ in pairs):  # not a monai.bundle command line (e.g. Python use)
        return
    problems: list[str] = []
    dropped = [key for key, value in pairs if DefaultParseValue(value) is None]
    if dropped:
        listed = ", ".join(f"--{k} None" for k in dropped)
        fixes = " ".join(f"--{k} '$None'" for k in dropped)
        problems.append(
            f"{listed}: python -m monai.bundle ignores overrides whose value is None, so the config's value would "
            f"be used instead. To set None, write {fixes}"
        )
    json_words = {"true": "True", "false": "False", "null": "'$None'"}
    misread = [
        (key, value)
        for key, value in pairs
        if value.strip().lower() in json_words and value.strip() not in ("True", "False")
    ]
    if misread:
        listed = ", ".join(f"--{k} {v}" for k, v in misread)
        fixes = " ".join(f"--{k} {json_words[v.strip().lower()]}" for k, v in misread)
        problems.append(
            f"{listed}: python-fire passes this as a string (the string 'false' counts as true), not as the JSON "
            f"value. Write {fixes} (or --key \"'text'\" if you meant the word)"
        )
    if problems:
        raise ConfigError("; ".join(problems))


def config_from_command_line(argv: Sequence[str] | None = None) -> dict | None:
    """The config a ``python -m monai.bundle run ...`` command executes: its config files merged, with the
    command-line overrides applied (expressions are kept as written, so the record can be re-run).

    Args:
        argv: the command line, ``sys.argv`` when ``None``.

    Returns:
        the merged config, or ``None`` when the command line names no config file.
    """
    from fire.parser import DefaultParseValue
    from monai.bundle import ConfigParser

    args = list(sys.argv if argv is None else argv)
    files: list[str] = []
    overrides: dict[str, Any] = {}
    skip = {"config_file", "meta_file", "logging_file", "args_file", "tracking", "run_id", "init_id", "final_id"}
    for key, value in _command_line_overrides(args):
        if key == "config_file":
            v = value.strip()
            files = list(DefaultParseValue(v)) if v.startswith("[") else v.split(",")
        elif key not in skip:
            parsed = DefaultParseValue(value)
            if parsed is not None:  # monai.bundle drops None overrides; the record shows what ran
                overrides[key] = parsed
    if not files:
        return None
    try:
        parser = ConfigParser()
        parser.read_config(files)
        for key, value in overrides.items():
            parser[key.replace("#", "::")] = value
        return parser.get()
    except Exception as e:  # the run itself reports a broken config; the record must not mask that
        logger.warning("could not reconstruct the config for the run record: %s", e)
        return {"config_files": files, "overrides": overrides}


def our_error(error: BaseException | None) -> DuSSSError | None:
    """The first :class:`~dussss_monai.errors.DuSSSError` in ``error``'s chain of causes and contexts, or ``None``."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, DuSSSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def install_error_hook() -> None:
    """Make an uncaught error of ours end the output with its own message (module docstring); other errors keep
    Python's traceback. The process still exits with status 1. Installing it twice is harmless."""
    if getattr(sys.excepthook, "_dussss", False):
        return
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        ours = our_error(value)
        if ours is None:
            previous(kind, value, tb)
            return
        if os.environ.get("DUSSS_TRACEBACK") == "1":
            previous(kind, value, tb)
        else:
            print("(the traceback is hidden: set DUSSS_TRACEBACK=1 to see it)", file=sys.stderr)
        print(f"error: {ours}", file=sys.stderr, flush=True)

    hook._dussss = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def prepare_run(argv: Sequence[str] | None = None) -> None:
    """The first step of every workflow of our bundles: install :func:`install_error_hook` and
    :func:`check_command_line`.

    Raises:
        ConfigError: from :func:`check_command_line`.
    """
    install_error_hook()
    check_command_line(argv)
