"""Image-text retrieval recall@k for validating the stage-1 VLM, with duplicate texts and chance level.

Over a validation set of ``N`` image-text pairs with global embeddings ``v_i`` (images) and ``t_i`` (texts):

- image -> text: for each image ``i`` rank the ``N`` texts by ``v_i . t_j``; the query is correct when one of
  the top ``k`` texts *equals* the image's own text (string equality).
- text -> image: for each text ``j`` rank the ``N`` images by ``t_j . v_i``; correct when one of the top ``k``
  images has a text equal to ``j``'s text.

Templated reports (QaTa-COV19, MoNuSeg) repeat: several images share one sentence. Counting only the
query's own partner as correct would make the metric unreachable (identical sentences have identical
embeddings, so ties are broken arbitrarily); counting any item with the same text is what retrieval of a
description means. Duplicates also raise the *chance level*, the expected recall@k of a uniformly random
ranking: with ``n_i`` items sharing query ``i``'s text, ``P(hit) = 1 - C(N - n_i, k) / C(N, k)``
(``= n_i / N`` for ``k = 1``), averaged over queries. It is reported with the recall so that results are
compared against chance rather than against 0.

The embeddings are accumulated on CPU over the whole epoch (``N x D`` floats for each modality), and
the metric is single-process (no distributed gather).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.metrics import Metric

from dussss_monai.errors import ConfigError
from dussss_monai.utils.texts import text_list

__all__ = ["retrieval_recall", "retrieval_chance", "RetrievalRecall", "RETRIEVAL_DIRECTIONS"]

RETRIEVAL_DIRECTIONS = ("mean", "image_to_text", "text_to_image", "chance")


def _text_codes(texts: Sequence[str]) -> torch.Tensor:
    ids = {t: k for k, t in enumerate(dict.fromkeys(texts))}
    return torch.tensor([ids[t] for t in texts], dtype=torch.long)


def retrieval_chance(texts: Sequence[str], k: int = 1) -> float:
    """Expected recall@k of a random ranking: ``mean_i 1 - C(N - n_i, k) / C(N, k)``.

    Args:
        texts: the ``N`` texts of the gallery (= the queries' texts).
        k: number of retrieved items.

    Returns:
        the chance level in ``(0, 1]`` (equal for both directions, since both galleries have ``N`` items).
    """
    codes = _text_codes(list(texts))
    n = len(codes)
    k = min(k, n)
    counts = torch.bincount(codes)[codes].tolist()
    total = math.comb(n, k)
    return float(sum(1.0 - math.comb(n - c, k) / total for c in counts) / n)


def retrieval_recall(
    image_embed: torch.Tensor, text_embed: torch.Tensor, texts: Sequence[str], k: int = 1
) -> dict[str, float]:
    """Recall@k in both directions, their mean, and the chance level (see the module docstring).

    Args:
        image_embed: ``(N, D)`` image embeddings (normalised; the dot product is the score).
        text_embed: ``(N, D)`` text embeddings of the same pairs.
        texts: the ``N`` sentences; items with equal sentences count as correct matches.
        k: number of retrieved items.

    Returns:
        ``{"image_to_text", "text_to_image", "mean", "chance"}`` as floats in ``[0, 1]``.

    Raises:
        ConfigError: for mismatched sizes, an empty set or ``k < 1``.
    """
    if k < 1:
        raise ConfigError(f"recall@k needs k >= 1, got {k}")
    texts = list(texts)
    n = len(texts)
    if n == 0:
        raise ConfigError("retrieval recall needs at least one image-text pair")
    if image_embed.shape[0] != n or text_embed.shape[0] != n or image_embed.shape[1:] != text_embed.shape[1:]:
        raise ConfigError(
            f"retrieval recall got {tuple(image_embed.shape)} image and {tuple(text_embed.shape)} text embeddings for {n} texts"
        )
    codes = _text_codes(texts)
    scores = image_embed.float().cpu() @ text_embed.float().cpu().t()  # (N images, N texts)
    kk = min(k, n)
    top_i2t = scores.topk(kk, dim=1).indices  # texts retrieved for each image
    top_t2i = scores.t().topk(kk, dim=1).indices  # images retrieved for each text
    i2t = (codes[top_i2t] == codes.unsqueeze(1)).any(1).float().mean().item()
    t2i = (codes[top_t2i] == codes.unsqueeze(1)).any(1).float().mean().item()
    return {"image_to_text": i2t, "text_to_image": t2i, "mean": 0.5 * (i2t + t2i), "chance": retrieval_chance(texts, k)}


def _default_transform(output: Any) -> Any:
    return output


class RetrievalRecall(Metric):
    """Ignite metric: image-text retrieval recall@k over an epoch (see :func:`retrieval_recall`).

    ``update`` takes a mapping with the batch's image embeddings, text embeddings and sentences (as produced
    by :class:`~dussss_monai.engines.vlm_pretrainer.VLMEvaluator`), or a list of such per-sample mappings
    (a decollated output). ``compute`` returns one float chosen by ``direction``; the full result of the
    last ``compute`` is kept in :attr:`last_result`.

    Args:
        k: number of retrieved items.
        direction: ``"mean"`` (of both directions, the default key metric), ``"image_to_text"``,
            ``"text_to_image"`` or ``"chance"`` (expected recall of a random ranking).
        output_transform: maps ``engine.state.output`` to the mapping described above.
        image_key, text_embed_key, text_key: keys of that mapping.
        device: where ignite keeps its state (embeddings are stored on CPU regardless).

    Raises:
        ConfigError: for an unknown ``direction``, ``k < 1``, or (in ``update``/``compute``) malformed input
            or an empty epoch.
    """

    #: set in ``__init__`` (ignite's ``Metric`` declares it ``tuple | None``)
    required_output_keys: tuple[str, str, str]

    def __init__(
        self,
        k: int = 1,
        direction: str = "mean",
        output_transform: Callable[[Any], Any] = _default_transform,
        image_key: str = "image_embed",
        text_embed_key: str = "text_embed",
        text_key: str = "text",
        device: str | torch.device = "cpu",
    ) -> None:
        if direction not in RETRIEVAL_DIRECTIONS:
            raise ConfigError(f"direction must be one of {RETRIEVAL_DIRECTIONS}, got {direction!r}")
        if k < 1:
            raise ConfigError(f"recall@k needs k >= 1, got {k}")
        self.k = int(k)
        self.direction = direction
        self.image_key, self.text_embed_key, self.text_key = image_key, text_embed_key, text_key
        # ignite extracts these keys from a mapping output and passes them to ``update`` as a tuple
        self.required_output_keys = (image_key, text_embed_key, text_key)
        self.last_result: dict[str, float] = {}
        self._images: list[torch.Tensor] = []
        self._texts_embed: list[torch.Tensor] = []
        self._texts: list[str] = []
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._images = []
        self._texts_embed = []
        self._texts = []

    def update(self, output: Any) -> None:
        """Add a batch: a mapping, an ``(image_embed, text_embed, texts)`` tuple, or a list of per-sample mappings."""
        if isinstance(output, tuple) and len(output) == 3 and isinstance(output[0], torch.Tensor):
            output = dict(zip(self.required_output_keys, output))
        if isinstance(output, Sequence) and not isinstance(output, (str, Mapping)):
            items = list(output)
            if not items:
                return
            try:
                img = torch.stack([torch.as_tensor(o[self.image_key]) for o in items])
                txt = torch.stack([torch.as_tensor(o[self.text_embed_key]) for o in items])
                texts = [o[self.text_key] for o in items]
            except (KeyError, TypeError) as e:
                raise ConfigError(
                    f"RetrievalRecall needs items with keys {self.image_key!r}, {self.text_embed_key!r}, {self.text_key!r}"
                ) from e
        elif isinstance(output, Mapping):
            missing = [k for k in (self.image_key, self.text_embed_key, self.text_key) if k not in output]
            if missing:
                raise ConfigError(f"RetrievalRecall output is missing {missing} (has {sorted(output)})")
            img, txt = output[self.image_key], output[self.text_embed_key]
            texts = text_list(output[self.text_key])
        else:
            raise ConfigError(f"RetrievalRecall expects a mapping or a list of mappings, got {type(output).__name__}")
        if img.ndim != 2 or txt.shape != img.shape or len(texts) != img.shape[0]:
            raise ConfigError(
                f"RetrievalRecall got image {tuple(img.shape)}, text {tuple(txt.shape)} embeddings and {len(texts)} texts"
            )
        self._images.append(img.detach().float().cpu())
        self._texts_embed.append(txt.detach().float().cpu())
        self._texts.extend(str(t) for t in texts)

    def compute(self) -> float:
        if not self._texts:
            raise ConfigError("RetrievalRecall must have at least one example before it can be computed")
        self.last_result = retrieval_recall(torch.cat(self._images), torch.cat(self._texts_embed), self._texts, self.k)
        return self.last_result[self.direction]
