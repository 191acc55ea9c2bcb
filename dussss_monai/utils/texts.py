"""The sentences of a batch as a list: a collated batch of one image may hold a bare string."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["text_list"]


def text_list(texts: str | Iterable[str]) -> list[str]:
    """``texts`` as a list of strings, one per image (a bare string is one image's sentence)."""
    return [texts] if isinstance(texts, str) else [str(t) for t in texts]
