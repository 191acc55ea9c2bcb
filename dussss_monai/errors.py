"""The project's own error types.

Every problem a user can cause (bad data, a bad config value, an unsafe checkpoint) is raised as a
:class:`DuSSSError` subclass whose message names the file and the problem, so that command-line entry
points can print it in one line instead of a stack trace from deep inside torch.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence

__all__ = ["DuSSSError", "DatasetError", "CheckpointError", "ConfigError", "problem_kind"]

#: a problem list longer than this is summarised on screen, the whole list written to a file
SHOWN_PROBLEMS = 20


def problem_kind(problem: str) -> str:
    """What kind of problem a line reports, without the file and the particulars: ``"/d/a.png: file does not
    exist"`` -> ``"file does not exist"``."""
    text = problem.split(": ", 1)[1] if ": " in problem else problem
    if re.match(r"^\w+\[\d+\]", text):  # "training[3] (path): no 'label' ..."
        text = text.split("): ", 1)[-1]
    text = re.sub(r"\([^()]*\)", "", text.split(";")[0])
    text = re.sub(r"\d+(\.\d+)?", "_", text)
    return " ".join(text.split()) or problem


class DuSSSError(Exception):
    """Base class of every error this project raises on purpose."""


class DatasetError(DuSSSError, ValueError):
    """A dataset, datalist or data file is unusable.

    Args:
        problems: one human-readable line per problem, each naming the file concerned. All problems
            found are reported at once so that a user can fix a dataset in one pass.
        header: first line of the message.

    A list of more than :data:`SHOWN_PROBLEMS` problems is summarised: the count of each kind of problem with its
    first three lines, and the whole list written to a file (``problems_file``) named in the message.
    """

    def __init__(self, problems: str | Sequence[str], header: str = "dataset check failed") -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        self.problems_file: str | None = None
        lines = [f"{header} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"]
        if len(self.problems) <= SHOWN_PROBLEMS:
            lines += [f"  - {p}" for p in self.problems]
        else:
            kinds: dict[str, list[str]] = {}
            for p in self.problems:
                kinds.setdefault(problem_kind(p), []).append(p)
            for kind, found in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
                lines.append(f"  {len(found)} x {kind}, e.g.:")
                lines += [f"    - {p}" for p in found[:3]]
            self.problems_file = self._write_all(self.problems)
            lines.append(f"the whole list: {self.problems_file}")
        super().__init__("\n".join(lines))

    @staticmethod
    def _write_all(problems: Sequence[str]) -> str:
        fd, path = tempfile.mkstemp(prefix="dussss_problems_", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(problems) + "\n")
        return path


class CheckpointError(DuSSSError, RuntimeError):
    """A checkpoint is missing, truncated, incompatible or unsafe to load."""


class ConfigError(DuSSSError, ValueError):
    """A configuration value is out of range or inconsistent."""
