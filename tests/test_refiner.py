"""VLMPseudoLabelRefiner: merged pseudo label = sigmoid of summed logits, frozen VLM, the grounding f_g's objective
reads (GroundingDecoderLoss) and its gradients, the rotated-sentence control."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dussss_monai.losses.grounding import GroundingDecoderLoss
from dussss_monai.losses.segmentation import SegmentationLoss
from dussss_monai.losses.text_guided import TextGuidedLoss
from dussss_monai.networks.grounding_decoder import GroundingDecoder, crop_to_boxes
from dussss_monai.refiner import GroundingTargets, VLMPseudoLabelRefiner


class FakeVLM(nn.Module):
    """Tiny stand-in with the VLM contract: encode_image -> patches/grid/embed, encode_text -> embed."""

    def __init__(self, in_channels: int = 1, hidden: int = 12, embed_dim: int = 8, patch: int = 8) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, hidden, patch, stride=patch)
        self.image_proj = nn.Linear(hidden, embed_dim)
        self.text_table = nn.Embedding(97, embed_dim)
        self.encoded_sentences: list[str] = []

    def encode_image(self, x: torch.Tensor) -> SimpleNamespace:
        p = self.patch_embed(x)
        patches = p.flatten(2).transpose(1, 2)
        return SimpleNamespace(
            embed=F.normalize(self.image_proj(patches.mean(1)), dim=1), patches=patches, grid=tuple(p.shape[-2:])
        )

    def encode_text(self, texts: list[str]) -> SimpleNamespace:
        self.encoded_sentences.extend(texts)
        ids = torch.tensor([sum(map(ord, t)) % 97 for t in texts])
        return SimpleNamespace(embed=F.normalize(self.text_table(ids), dim=1))


def _refiner(**kw) -> VLMPseudoLabelRefiner:
    torch.manual_seed(0)
    return VLMPseudoLabelRefiner(FakeVLM(), GroundingDecoder(12, 8, hidden_channels=8), **kw)


def test_merged_is_sigmoid_of_summed_logits_not_summed_probabilities():
    ref = _refiner().eval()
    images = torch.rand(1, 1, 32, 32)
    text = ref.text_logits(images, ["x"]).detach()
    teacher = torch.tensor([-3.0, -1.0, 0.0, 2.0]).repeat_interleave(256).view(1, 1, 32, 32)
    out = ref(images, ["x"], teacher)
    torch.testing.assert_close(out.merged, torch.sigmoid(teacher + text))
    torch.testing.assert_close(out.text_mask, torch.sigmoid(text))
    wrong = torch.sigmoid(torch.sigmoid(teacher) + torch.sigmoid(text))  # the research code's version
    assert not torch.allclose(out.merged, wrong)
    assert wrong.min() >= 0.5  # summed probabilities never let the target fall below 0.5


def test_forward_returns_detached_targets_at_image_size_and_no_gradients_in_eval_mode():
    ref = _refiner().eval()
    images = torch.rand(2, 1, 32, 32)
    teacher_logits = torch.randn(2, 1, 32, 32, requires_grad=True)
    out = ref(images, ["left lung", "right lung"], teacher_logits)
    assert out.merged.shape == out.text_mask.shape == (2, 1, 32, 32)
    assert not out.merged.requires_grad and not out.text_mask.requires_grad
    assert not out.grounding.pixel_features.requires_grad and out.labeled_logits is None
    text = ref.text_logits(images, ["left lung", "right lung"]).detach()
    torch.testing.assert_close(out.merged, torch.sigmoid(teacher_logits.detach() + text))
    with pytest.raises(ValueError, match="differ in shape"):
        ref(images, ["left lung", "right lung"], torch.zeros(2, 1, 16, 16))


def _decoder_loss(out, loss: GroundingDecoderLoss):
    g = out.grounding
    return loss(g.pixel_features, g.feature_logits, g.text_embed, out.texts, out.labeled_logits, out.labeled_masks)


def test_the_grounding_of_train_mode_gives_f_g_objective():
    """gamma * L_tg + beta * L_ground, with L_ground on the labeled images and gradients into f_g only."""
    ref = _refiner().train()
    loss = GroundingDecoderLoss(text_guided_weight=0.5, grounding_loss=SegmentationLoss(), grounding_weight=2.0)
    images, texts = torch.rand(3, 1, 32, 32), ["a", "b", "c"]
    labeled = GroundingTargets(torch.rand(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float(), ["a", "d"])
    out = ref(images, texts, torch.zeros(3, 1, 32, 32), labeled=labeled)
    objective, terms = _decoder_loss(out, loss)
    assert set(terms) == {"loss_tg", "loss_ground"}
    torch.testing.assert_close(objective, 0.5 * terms["loss_tg"] + 2.0 * terms["loss_ground"])
    g = ref.ground(labeled.images, labeled.texts)
    torch.testing.assert_close(
        terms["loss_ground"], SegmentationLoss()(g.text_logits, labeled.masks), rtol=1e-4, atol=1e-6
    )
    objective.backward()
    assert all(p.grad is None for p in ref.vlm.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ref.grounding_decoder.parameters())
    without = ref(images, texts, torch.zeros(3, 1, 32, 32))  # no labeled images: L_tg alone
    assert set(_decoder_loss(without, loss)[1]) == {"loss_tg"}


def test_rotated_texts_ground_each_image_with_its_neighbours_sentence():
    images, texts = torch.rand(3, 1, 32, 32), ["left", "right", "both"]
    plain, rotated = _refiner().eval(), _refiner(rotate_texts=True).eval()
    out = rotated(images, texts, torch.zeros(3, 1, 32, 32))
    assert out.texts == ["right", "both", "left"] and texts == ["left", "right", "both"]
    torch.testing.assert_close(out.text_mask, torch.sigmoid(plain.text_logits(images, out.texts)))


def test_vlm_is_frozen_and_stays_in_eval_mode():
    ref = _refiner()
    ref.train()
    assert not ref.vlm.training and ref.grounding_decoder.training
    assert all(not p.requires_grad for p in ref.vlm.parameters())
    assert all(p.requires_grad for p in ref.grounding_decoder.parameters())


def test_text_guided_loss_grads_reach_decoder_only():
    ref = _refiner()
    g = ref.ground(torch.rand(3, 1, 32, 32), ["a", "b", "c"])
    TextGuidedLoss()(g.pixel_features, g.feature_logits, g.text_embed, ["a", "b", "c"]).backward()
    assert all(p.grad is None for p in ref.vlm.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ref.grounding_decoder.parameters())


def test_texts_must_be_a_list_of_sentences():
    with pytest.raises(TypeError):
        _refiner().encode_texts("a sentence, not a list")


def test_images_are_resized_for_the_vlm_and_masks_returned_at_input_size():
    ref = _refiner(vlm_image_size=(32, 32))
    logits = ref.text_logits(torch.rand(1, 1, 48, 40), ["x"])
    assert logits.shape == (1, 1, 48, 40)


def test_text_count_must_match_batch():
    with pytest.raises(ValueError, match="texts"):
        _refiner().ground(torch.rand(2, 1, 32, 32), ["only one"])


def test_with_the_real_stage1_vlm():
    vlm_mod = pytest.importorskip("dussss_monai.networks.vlm")
    from dussss_monai.networks.image_encoder import ViTImageEncoder
    from dussss_monai.networks.text_encoder import TextEncoding

    class TinyTextEncoder(nn.Module):
        hidden_size = 16

        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(97, 16)

        def forward(self, texts):
            ids = torch.tensor([[sum(map(ord, t)) % 97] for t in texts])
            tokens = self.table(ids)
            return TextEncoding(
                cls=tokens[:, 0], tokens=tokens, attention_mask=torch.ones(len(texts), 1, dtype=torch.long)
            )

    torch.manual_seed(0)
    image_encoder = ViTImageEncoder(
        in_channels=1, img_size=32, patch_size=8, hidden_size=16, mlp_dim=32, num_layers=1, num_heads=2
    )
    vlm = vlm_mod.DuSSSVisionLanguageModel(image_encoder, TinyTextEncoder(), embed_dim=8)
    ref = VLMPseudoLabelRefiner(vlm, GroundingDecoder(in_channels=16, embed_dim=8, hidden_channels=8))
    images = torch.rand(2, 1, 32, 32)
    texts = ["bilateral infection", "left lower lung"]
    g = ref.ground(images, texts)
    assert g.pixel_features.shape == (2, 8, 16, 16) and g.text_logits.shape == (2, 1, 32, 32)
    out = ref.eval()(images, texts, torch.zeros(2, 1, 32, 32))
    torch.testing.assert_close(out.merged, out.text_mask)
    TextGuidedLoss()(g.pixel_features, g.feature_logits, g.text_embed, texts).backward()
    assert all(p.grad is None for p in vlm.parameters())


def test_crop_to_boxes_equals_cropping_the_map():
    x = torch.arange(2 * 100 * 80, dtype=torch.float32).view(2, 1, 100, 80)
    boxes = torch.tensor([[0.2, 0.2, 0.4, 0.5], [0.0, 0.5, 1.0, 0.5]])
    out = crop_to_boxes(x, boxes, (40, 40))
    torch.testing.assert_close(out[0], x[0, :, 20:60, 16:56], atol=1e-2, rtol=0)
    # a box resampled to another size: the crop of a smooth map, up to interpolation
    half = crop_to_boxes(x, boxes, (50, 20))
    torch.testing.assert_close(
        half[1],
        F.interpolate(x[1:, :, :, 40:], size=(50, 20), mode="bilinear", align_corners=False)[0],
        atol=1.0,
        rtol=0,
    )
    with pytest.raises(ValueError, match="boxes"):
        crop_to_boxes(x, boxes[:1], (8, 8))


def test_grounding_decoder_with_image_skip_reads_the_image_at_input_size():
    """With f_g's image skip the mask is computed at the input size, from the input image (not the VLM's resize)."""
    torch.manual_seed(0)
    ref = VLMPseudoLabelRefiner(
        FakeVLM(), GroundingDecoder(12, 8, hidden_channels=8, image_skip_channels=4), vlm_image_size=(32, 32)
    )
    images = torch.rand(2, 1, 48, 40)
    g = ref.ground(images, ["a", "b"])
    assert g.pixel_features.shape == (2, 8, 48, 40)
    torch.testing.assert_close(g.text_logits, g.feature_logits)
    TextGuidedLoss()(g.pixel_features, g.feature_logits, g.text_embed, ["a", "b"]).backward()
    skip = ref.grounding_decoder.image_skip
    assert skip is not None and all(p.grad is not None and p.grad.abs().sum() > 0 for p in skip.parameters())
    assert all(p.grad is None for p in ref.vlm.parameters())


def test_patch_training_grounds_with_the_spatial_prior_of_the_patch_region():
    """With boxes the sentence's spatial prior is cropped to each patch's region, as the features are."""
    torch.manual_seed(0)
    ref = VLMPseudoLabelRefiner(FakeVLM(), GroundingDecoder(12, 8, hidden_channels=8, prior_grid=4)).eval()
    with torch.no_grad():
        ref.grounding_decoder.spatial_prior.weight.normal_()
    images, texts = torch.rand(2, 1, 32, 32), ["upper left lung", "lower right lung"]
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]])
    with torch.no_grad():
        with_prior = ref.ground(images, texts, boxes).text_logits
        prior = ref.grounding_decoder.prior_logits(ref.encode_texts(texts), with_prior.shape[-2:], boxes)
        ref.grounding_decoder.spatial_prior = None
        without = ref.ground(images, texts, boxes).text_logits
    assert prior.abs().max() > 1.0
    torch.testing.assert_close(with_prior - without, prior, atol=1e-4, rtol=1e-4)
