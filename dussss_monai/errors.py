"""The project's own error types.

Every problem a user can cause (bad data, a bad config value, an unsafe checkpoint) is raised as a
:class:`DuSSSError` subclass whose message names the file and the problem, so that command-line entry
points can print it in one line instead of a stack trace from deep inside torch.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DuSSSError", "DatasetError", "CheckpointError", "ConfigError"]


class DuSSSError(Exception):
    """Base class of every error this project raises on purpose."""


class DatasetError(DuSSSError, ValueError):
    """A dataset, datalist or data file is unusable.

    Args:
        problems: one human-readable line per problem, each naming the file concerned. All problems
            found are reported at once so that a user can fix a dataset in one pass.
        header: first line of the message.
    """

    def __init__(self, problems: str | Sequence[str], header: str = "dataset check failed") -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        lines = [f"{header} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class CheckpointError(DuSSSError, RuntimeError):
    """A checkpoint is missing, truncated, incompatible or unsafe to load."""


class ConfigError(DuSSSError, ValueError):
    """A configuration value is out of range or inconsistent."""
