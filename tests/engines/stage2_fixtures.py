"""Tiny stage-2 set-ups shared by the trainer tests: a fake VLM, generated batches and trainer builders."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines import SupervisedTrainer
from monai.networks.nets import UNet
from torch import nn
from torch.utils.data import DataLoader

from dussss_monai.engines import DuSSSTrainer, MeanTeacherTrainer
from dussss_monai.losses.grounding import GroundingDecoderLoss
from dussss_monai.losses.segmentation import SegmentationLoss
from dussss_monai.networks.grounding_decoder import GroundingDecoder
from dussss_monai.refiner import VLMPseudoLabelRefiner

SIZE = 32
TEXTS = ["left lung", "right lung", "both lungs", "no finding"]
REFINER_ARGS = ("text_guided_weight", "grounding_supervision_weight")


class FakeVLM(nn.Module):
    """Tiny stand-in with the stage-1 VLM contract (encode_image -> patches/grid, encode_text -> embed)."""

    def __init__(self, hidden: int = 12, embed_dim: int = 8, patch: int = 8) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(1, hidden, patch, stride=patch)
        self.text_table = nn.Embedding(97, embed_dim)

    def encode_image(self, x):
        p = self.patch_embed(x)
        return SimpleNamespace(embed=None, patches=p.flatten(2).transpose(1, 2), grid=tuple(p.shape[-2:]))

    def encode_text(self, texts):
        ids = torch.tensor([sum(map(ord, t)) % 97 for t in texts])
        return SimpleNamespace(embed=F.normalize(self.text_table(ids), dim=1))


def make_data(n: int, labeled: bool, prefix: str, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        img = torch.rand(1, SIZE, SIZE, generator=g)
        item = {"image": img, "text": TEXTS[i % len(TEXTS)], "name": f"{prefix}{i}.png"}
        if labeled:
            item["label"] = (img > 0.6).float()
        items.append(item)
    return items


def tiny_unet() -> UNet:
    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16, 32), strides=(2, 2))


def make_refiner() -> VLMPseudoLabelRefiner:
    return VLMPseudoLabelRefiner(FakeVLM(), GroundingDecoder(12, 8, hidden_channels=8))


def make_decoder_loss(
    text_guided_weight: float = 1.0, grounding_supervision_weight: float = 0.0
) -> GroundingDecoderLoss:
    return GroundingDecoderLoss(
        text_guided_weight=text_guided_weight,
        grounding_loss=SegmentationLoss(),
        grounding_weight=grounding_supervision_weight,
    )


def make_trainer(
    method: str = "dussss",
    seed: int = 0,
    n_labeled: int = 2,
    n_unlabeled: int = 4,
    batch_u: int = 2,
    max_epochs: int = 1,
    unlabeled_loader: Any = None,
    lr: float = 1e-2,
    decoder_lr: float = 1e-2,
    **kw: Any,
) -> SupervisedTrainer:
    """A trainer of ``method`` ("supervised", "mean_teacher", "dussss") on generated 32 x 32 images."""
    torch.manual_seed(seed)
    net = tiny_unet()
    labeled = DataLoader(make_data(n_labeled, True, "l"), batch_size=1, shuffle=False)
    kw.setdefault("loss_function", SegmentationLoss())
    common = dict(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=labeled,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=lr),
    )
    if method == "supervised":
        return SupervisedTrainer(**common, **kw)
    if unlabeled_loader is None:
        unlabeled_loader = DataLoader(make_data(n_unlabeled, False, "u", seed=1), batch_size=batch_u, shuffle=False)
    kw.setdefault("consistency_weight", 1.0)
    if method == "mean_teacher":
        return MeanTeacherTrainer(**common, unlabeled_data_loader=unlabeled_loader, **kw)
    refiner = make_refiner()
    decoder_loss = make_decoder_loss(**{k: kw.pop(k) for k in REFINER_ARGS if k in kw})
    decoder_opt = torch.optim.Adam(refiner.grounding_decoder.parameters(), lr=decoder_lr)
    return DuSSSTrainer(
        **common,
        unlabeled_data_loader=unlabeled_loader,
        refiner=refiner,
        decoder_optimizer=decoder_opt,
        decoder_loss_function=decoder_loss,
        **kw,
    )


class RecordingLoss(SegmentationLoss):
    """SegmentationLoss that records the ``(target, mask)`` of every call (for the consistency-term tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    @property
    def targets(self) -> list[torch.Tensor]:
        return [target for target, _ in self.calls]

    def forward(self, logits, target, mask=None):
        self.calls.append((target.detach().clone(), mask))
        return super().forward(logits, target, mask=mask)


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for k, p in module.named_parameters()
    }


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def first_step(trainer):
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: e.terminate())
    trainer.run()
    return trainer
