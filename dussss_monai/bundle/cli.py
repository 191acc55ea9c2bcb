"""The ``python -m monai.bundle`` command line (or Python call) as our configs see it: the bundle folder and config
files it names, the settings it overrides, the overrides it would drop or misread without a word, and how our
errors reach the user.

A bundle can be run three ways: ``python -m monai.bundle run ...`` (or ``dussss run ...``), ``monai.bundle.run(...)``
from Python, or a ``ConfigWorkflow`` built by hand. :func:`run_arguments` finds the config files and overrides of
either of the first two (the command line, else the arguments of the ``monai.bundle.run`` call being executed), and
:func:`running_workflow` the ``ConfigWorkflow`` whose config is being evaluated, so that the checks of
:func:`prepare_run` and the bundle folder of :func:`bundle_root` are the same whichever way a bundle runs.

MONAI wraps every exception raised while a config is evaluated in ``RuntimeError: Failed to evaluate ...``, so a
user's mistake would end a page of traceback on MONAI's words. :func:`prepare_run` (the first step of every
workflow of our bundles) and the ``dussss`` console command (:mod:`dussss_monai.bundle.console`) install an
exception hook that prints an error of ours (:class:`~dussss_monai.errors.DuSSSError`) as its message alone, the
file or setting and the fix last; ``DUSSS_TRACEBACK=1`` shows the whole traceback above it.
"""

from __future__ import annotations

import inspect
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
    "stage1_command",
    "prepare_run",
    "check_command_line",
    "check_device",
    "check_tracking",
    "config_from_command_line",
    "current_config",
    "run_arguments",
    "running_workflow",
    "install_error_hook",
    "our_error",
]

logger = logging.getLogger(__name__)

#: ``monai.bundle`` arguments that are not config overrides
_NOT_OVERRIDES = frozenset(
    {"config_file", "meta_file", "logging_file", "args_file", "tracking", "run_id", "init_id", "final_id",
     "workflow_type", "workflow_name", "properties_path"}
)  # fmt: skip


def running_workflow() -> Any | None:
    """The MONAI ``ConfigWorkflow`` whose config is being evaluated by the caller, or ``None``.

    Config expressions run inside ``ConfigWorkflow._run_expr`` (``initialize``, ``run``), so the workflow is
    found on the call stack; a config parsed by a bare ``ConfigParser`` has none.
    """
    from monai.bundle import ConfigWorkflow

    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigWorkflow):
            return candidate
        frame = frame.f_back
    return None


def _python_call() -> tuple[list[str], dict[str, Any], Any] | None:
    """``(config files, overrides, tracking)`` of the ``monai.bundle.run(...)`` call on the stack, or ``None``."""
    frame = inspect.currentframe()
    while frame is not None:
        code = frame.f_code
        if code.co_name == "run" and frame.f_globals.get("__name__") == "monai.bundle.scripts":
            local = frame.f_locals
            files = local.get("config_file")
            files = [str(f) for f in files] if isinstance(files, (list, tuple)) else ([str(files)] if files else [])
            overrides = {k: v for k, v in dict(local.get("override") or {}).items() if k not in _NOT_OVERRIDES}
            return files, overrides, local.get("tracking")
        frame = frame.f_back
    return None


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


def stage1_command(dataset_dir: str | os.PathLike = "<the same dataset>") -> str:
    """The command that trains stage 1 of the bundle being run, for messages (its ``pretrain.json``)."""
    return (
        f"python -m monai.bundle run training --config_file {config_path('pretrain.json')} --dataset_dir {dataset_dir}"
    )


def bundle_root(default: str = ".", argv: Sequence[str] | None = None) -> str:
    """Return the bundle folder of the config file being run.

    ``python -m monai.bundle run training --config_file bundles/x/configs/train.json`` yields ``bundles/x``, and so
    does ``monai.bundle.run("training", config_file="bundles/x/configs/train.json")`` from Python, so a bundle runs
    from any working directory. Where neither names a config file (a config parsed by a bare ``ConfigParser``),
    ``default`` is returned; override ``bundle_root`` explicitly in that case.

    Args:
        default: returned when no config file is found.
        argv: the command line to read, ``sys.argv`` when ``None``.

    Returns:
        the bundle root folder as a string.
    """
    files = _config_files(list(sys.argv if argv is None else argv))
    if not files and argv is None:
        call = _python_call()
        files = call[0] if call else []
    if files:
        folder = Path(files[0]).resolve().parent  # a list of config files: the first one's bundle
    else:
        root = getattr(running_workflow() if argv is None else None, "config_root_path", None)
        if root is None or str(root) == "configs":  # MONAI's placeholder when it was given no config file
            return default
        folder = Path(root).resolve()
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
    """The config a bundle run executes (:func:`run_arguments`): its config files merged, with the overrides
    applied (expressions are kept as written, so the record can be re-run).

    Args:
        argv: the command line, ``sys.argv`` when ``None``.

    Returns:
        the merged config, or ``None`` when no config file is named.
    """
    from monai.bundle import ConfigParser

    arguments = run_arguments(argv)
    if arguments is None or not arguments[0]:
        return None
    files, overrides, _ = arguments
    try:
        parser = ConfigParser()
        parser.read_config(files)
        for key, value in overrides.items():
            parser[key.replace("#", "::")] = value
        return parser.get()
    except Exception as e:  # the run itself reports a broken config; the record must not mask that
        logger.warning("could not reconstruct the config for the run record: %s", e)
        return {"config_files": files, "overrides": overrides}


def run_arguments(argv: Sequence[str] | None = None) -> tuple[list[str], dict[str, Any], Any] | None:
    """``(config files, overrides, tracking)`` of the bundle run: the command line when it names ``--config_file``,
    else the ``monai.bundle.run(...)`` call on the stack; ``None`` when neither (a hand-built workflow).

    Overrides keep the values as ``monai.bundle`` receives them (python-fire's parsing of the command line); the
    ``None`` values it drops are left out.
    """
    from fire.parser import DefaultParseValue

    args = list(sys.argv if argv is None else argv)
    pairs = _command_line_overrides(args)
    if any(key == "config_file" for key, _ in pairs):
        files: list[str] = []
        overrides: dict[str, Any] = {}
        tracking = None
        for key, value in pairs:
            if key == "config_file":
                v = value.strip()
                files = [str(f) for f in DefaultParseValue(v)] if v.startswith("[") else v.split(",")
            elif key == "tracking":
                tracking = value
            elif key not in _NOT_OVERRIDES:
                parsed = DefaultParseValue(value)
                if parsed is not None:
                    overrides[key] = parsed
        return files, overrides, tracking
    return _python_call() if argv is None else None


def _read_files(files: Sequence[str]) -> dict[str, Any]:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(files))
    return parser.get()


def current_config(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The configuration being run, unevaluated: the running workflow's (config files, overrides, tracking
    additions), else the config files of :func:`run_arguments` with the overrides applied; ``None`` when unknown."""
    workflow = running_workflow() if argv is None else None
    if workflow is not None:
        return dict(workflow.parser.get())
    return config_from_command_line(argv)


def check_device(device: Any) -> None:
    """Refuse a ``device`` setting this machine cannot run, before anything is built.

    Raises:
        ConfigError: not ``cpu`` / ``cuda`` / ``cuda:<n>``, or CUDA asked for where PyTorch has no CUDA (with the
            command that installs a CUDA build) or sees no GPU.
    """
    import torch

    if not isinstance(device, (str, torch.device)):
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"--device {device!r} is not a device: use cpu, cuda or cuda:<n>") from e
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise ConfigError(
                f"--device {device}: this PyTorch ({torch.__version__}) is a CPU build. Install a CUDA build, e.g. "
                'make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126", '
                "or leave --device out to run on the CPU"
            )
        if not torch.cuda.is_available() or (dev.index is not None and dev.index >= torch.cuda.device_count()):
            raise ConfigError(
                f"--device {device}: PyTorch sees {torch.cuda.device_count()} GPU(s) here; check the driver "
                "(nvidia-smi) and CUDA_VISIBLE_DEVICES, or leave --device out to run on the CPU"
            )
    elif dev.type not in ("cpu", "mps"):
        raise ConfigError(f"--device {device}: use cpu, cuda or cuda:<n>")


def check_tracking(tracking: Any) -> None:
    """Refuse ``--tracking mlflow`` where mlflow is not installed, in one line instead of a traceback mid-run.

    Raises:
        ConfigError: naming the package and the command that installs it.
    """
    if tracking != "mlflow":
        return
    try:
        import mlflow  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            "--tracking mlflow needs the mlflow package, which is not installed: "
            'pip install -e ".[mlflow]" in the project (or pip install mlflow), or leave --tracking out '
            "(TensorBoard logs are written to the run folder in any case)"
        ) from e


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
    """The first step of every workflow of our bundles, before anything is read or written: install
    :func:`install_error_hook`, then check the run's settings, every problem at once: the spellings
    ``monai.bundle`` would misread (:func:`check_command_line`), unknown settings, types and ranges
    (:func:`~dussss_monai.bundle.settings.check_settings`), the device (:func:`check_device`) and the tracking
    (:func:`check_tracking`).

    Raises:
        ConfigError: naming each problem.
    """
    from dussss_monai.bundle.settings import check_settings, is_expression

    install_error_hook()
    check_command_line(argv)
    arguments = run_arguments(argv)
    config = current_config(argv)
    if config is None:
        return
    files, overrides, tracking = arguments if arguments is not None else ([], {}, None)
    known = _read_files(files) if files else config
    check_settings(config, overrides=list(overrides), known=list(known))
    device = config.get("device")
    if device is not None and not is_expression(device):
        check_device(device)
    check_tracking(tracking)
