"""DuSSSTrainer (stage 2 with text): loss routing between student and f_g, f_g's objective, the grounding context
of patch training, resume, non-finite guard."""

from __future__ import annotations

import copy
import glob
import math
import os

import pytest
import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from monai.handlers import MeanDice, from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose
from stage2_fixtures import TEXTS, RecordingLoss, assert_same, first_step, grads, make_trainer, params
from torch.utils.data import DataLoader

import dussss_monai.engines.student_views as student_views_module
from dussss_monai.bundle import checkpoint_objects
from dussss_monai.engines import CutMix
from dussss_monai.engines.schedules import ConsistencyWeight, sigmoid_rampup
from dussss_monai.errors import ConfigError, DuSSSError
from dussss_monai.handlers.checkpoint import AtomicCheckpointSaver, SafeCheckpointLoader
from dussss_monai.losses.grounding import GroundingDecoderLoss
from dussss_monai.losses.segmentation import SegmentationLoss
from dussss_monai.losses.text_guided import TextGuidedLoss
from dussss_monai.utils.io import safe_torch_load


def _first_student_grads(trainer) -> dict:
    out: dict = {}

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def _grab(engine):
        if engine.state.iteration == 1:
            out.update(grads(engine.network))
            batch = getattr(engine.state, "unlabeled_batch", None)
            if batch is not None:
                out["_x_u"] = batch["image"]
                out["_texts"] = list(batch["text"])
            decoder = getattr(engine, "grounding_decoder", None)
            out["_decoder"] = grads(decoder) if decoder is not None else None
            engine.terminate()

    trainer.run()
    return out


@pytest.mark.parametrize("term", ["merged", "text"])
def test_l_merged_and_l_text_reach_the_student(term):
    """Gradient of (L_sup + w L_semi) minus that of L_sup alone is w * dL_term/dtheta, and non-zero."""
    sup = _first_student_grads(make_trainer("supervised"))
    kw = {"use_merged": term == "merged", "use_text_loss": term == "text", "use_tg": False}
    semi_trainer = make_trainer("dussss", consistency_weight=0.7, **kw)
    start_student = copy.deepcopy(semi_trainer.network)
    refiner = copy.deepcopy(semi_trainer.refiner)
    semi = _first_student_grads(semi_trainer)
    diff = {k: semi[k] - sup[k] for k in sup if not k.startswith("_")}
    assert sum(float(d.abs().sum()) for d in diff.values()) > 1e-6

    # the same gradient computed by hand from the targets the method defines
    x_u, texts = semi["_x_u"], semi["_texts"]
    text_logits = refiner.text_logits(x_u, texts).detach()
    with torch.no_grad():
        teacher_logits = start_student.eval()(x_u)  # the teacher is an exact copy at iteration 1
    target = torch.sigmoid(teacher_logits + text_logits) if term == "merged" else torch.sigmoid(text_logits)
    start_student.train().zero_grad()
    (0.7 * SegmentationLoss()(start_student(x_u), target)).backward()
    expected = grads(start_student)
    for k in expected:
        torch.testing.assert_close(diff[k], expected[k], rtol=1e-4, atol=1e-6, msg=k)


def test_grounding_decoder_gets_exactly_the_l_tg_gradient():
    trainer = make_trainer("dussss")
    refiner = copy.deepcopy(trainer.refiner)
    got = _first_student_grads(trainer)
    g = refiner.ground(got["_x_u"], got["_texts"])
    TextGuidedLoss()(g.pixel_features, g.feature_logits, g.text_embed, got["_texts"]).backward()
    expected = grads(refiner.grounding_decoder)
    assert any(float(v.abs().sum()) > 0 for v in expected.values())
    for k in expected:  # the student's losses add nothing to f_g's gradient
        torch.testing.assert_close(got["_decoder"][k], expected[k], rtol=1e-5, atol=1e-7, msg=k)
    assert all(p.grad is None for p in trainer.refiner.vlm.parameters())


def test_l_tg_never_reaches_the_student_and_f_g_changes_only_with_l_tg():
    with_tg = make_trainer("dussss", max_epochs=1)
    without_tg = make_trainer("dussss", max_epochs=1, use_tg=False)
    dec0 = params(with_tg.grounding_decoder)
    assert_same(dec0, params(without_tg.grounding_decoder))
    for t in (with_tg, without_tg):
        first_step(t)
    # one identical step of the student with and without L_tg: L_tg has no path into the student
    assert_same(params(with_tg.network), params(without_tg.network))
    assert_same(params(with_tg.teacher), params(without_tg.teacher))
    # f_g moves only through its own optimiser and L_tg
    assert without_tg.decoder_optimizer is None
    assert_same(params(without_tg.grounding_decoder), dec0)
    assert all(p.grad is None for p in without_tg.grounding_decoder.parameters())
    assert any(not torch.equal(v, dec0[k]) for k, v in params(with_tg.grounding_decoder).items())


def test_output_dict_and_train_metric():
    post = Compose([Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=0.5)])
    trainer = make_trainer(
        "dussss",
        consistency_weight=ConsistencyWeight(1.0, rampup_steps=10),
        postprocessing=post,
        key_train_metric={"train_mean_dice": MeanDice(output_transform=from_engine(["pred", "label"]))},
    )
    weights = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: weights.append(e.state.output[0]["weight"]))
    trainer.run()
    out = trainer.state.output[0]  # decollated: one dict per labeled image
    for key in (
        "image",
        "label",
        "pred",
        "loss",
        "loss_sup",
        "loss_semi",
        "loss_merged",
        "loss_text",
        "loss_tg",
        "weight",
    ):
        assert key in out, key
    assert out["pred"].shape == (1, 32, 32)
    torch.testing.assert_close(out["loss"], out["loss_sup"] + out["weight"] * out["loss_semi"])
    torch.testing.assert_close(out["loss_semi"], (out["loss_merged"] + out["loss_text"]) / 2)
    assert weights == pytest.approx([sigmoid_rampup(0, 10), sigmoid_rampup(1, 10)])
    assert 0.0 <= trainer.state.metrics["train_mean_dice"] <= 1.0


def test_resume_restores_iteration_teacher_and_optimiser_state(tmp_path):
    first = make_trainer("dussss", max_epochs=2)
    AtomicCheckpointSaver(
        str(tmp_path), checkpoint_objects(first), file_prefix="training", save_interval=1, n_saved=1
    ).attach(first)
    first.run()
    files = glob.glob(os.path.join(tmp_path, "*.pt"))
    assert len(files) == 1 and not [f for f in os.listdir(tmp_path) if not f.endswith(".pt")]  # no temp left
    assert set(safe_torch_load(files[0])) == {
        "network",
        "optimizer",
        "trainer",
        "teacher",
        "grounding_decoder",
        "decoder_optimizer",
    }

    resumed = make_trainer("dussss", seed=99, max_epochs=3)  # different initial weights
    assert not torch.equal(params(resumed.teacher)["model.0.conv.weight"], params(first.teacher)["model.0.conv.weight"])
    SafeCheckpointLoader(files[0], checkpoint_objects(resumed)).attach(resumed)
    at_start: dict = {}

    @resumed.on(Events.STARTED)
    def _grab(engine):  # runs after the loader (handlers fire in attachment order)
        at_start.update(
            iteration=engine.state.iteration,
            epoch=engine.state.epoch,
            max_epochs=engine.state.max_epochs,
            teacher=params(engine.teacher),
            network=params(engine.network),
            decoder=params(engine.grounding_decoder),
            optimizer=copy.deepcopy(engine.optimizer.state_dict()),
            decoder_optimizer=copy.deepcopy(engine.decoder_optimizer.state_dict()),
        )

    iterations = []
    resumed.add_event_handler(Events.ITERATION_STARTED, lambda e: iterations.append(e.state.iteration))
    resumed.run()
    assert (at_start["iteration"], at_start["epoch"], at_start["max_epochs"]) == (4, 2, 3)
    assert_same(at_start["teacher"], params(first.teacher))
    assert_same(at_start["network"], params(first.network))
    assert_same(at_start["decoder"], params(first.grounding_decoder))
    for name, opt in (("optimizer", first.optimizer), ("decoder_optimizer", first.decoder_optimizer)):
        ref = opt.state_dict()
        assert at_start[name]["param_groups"] == ref["param_groups"]
        for idx, state in ref["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(at_start[name]["state"][idx][key], value, rtol=0, atol=0)
    assert iterations == [5, 6]  # training continues where it stopped


def test_non_finite_loss_raises_naming_the_iteration_before_any_step():
    holder: dict = {}
    base = SegmentationLoss()

    def loss_fn(pred, target):
        loss = base(pred, target)
        return loss * float("nan") if holder["engine"].state.iteration == 3 else loss

    trainer = make_trainer("dussss", max_epochs=2, loss_function=loss_fn)
    holder["engine"] = trainer
    snapshots: dict = {}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _snap(engine):
        snapshots.update(
            network=params(engine.network), teacher=params(engine.teacher), decoder=params(engine.grounding_decoder)
        )

    with pytest.raises(DuSSSError, match=r"iteration 3\b"):
        trainer.run()
    assert trainer.state.iteration == 3
    assert_same(params(trainer.network), snapshots["network"])  # weights of iteration 2, untouched by NaN
    assert_same(params(trainer.teacher), snapshots["teacher"])
    assert_same(params(trainer.grounding_decoder), snapshots["decoder"])


def test_grounding_supervision_trains_f_g_and_never_the_student():
    plain = make_trainer("dussss")
    supervised_fg = make_trainer("dussss", grounding_supervision_weight=1.0)
    dec0 = params(plain.grounding_decoder)
    for t in (plain, supervised_fg):
        first_step(t)
    # the student's step is identical with and without L_ground: L_ground has no path into the student
    assert_same(params(plain.network), params(supervised_fg.network))
    assert "loss_ground" in supervised_fg.state.output[0] and "loss_ground" not in plain.state.output[0]
    moved_plain = params(plain.grounding_decoder)
    moved_sup = params(supervised_fg.grounding_decoder)
    assert any(not torch.equal(moved_plain[k], moved_sup[k]) for k in dec0), "L_ground must change f_g's step"


def test_f_g_loss_weights_and_switches_are_checked():
    with pytest.raises(ValueError, match="grounding_weight=-1.0"):
        make_trainer("dussss", grounding_supervision_weight=-1.0)
    with pytest.raises(ValueError, match="text_guided_weight=-0.1"):
        make_trainer("dussss", text_guided_weight=-0.1)
    with pytest.raises(ValueError, match="grounding_loss"):
        GroundingDecoderLoss(grounding_weight=1.0)
    with pytest.raises(ValueError, match="no objective"):
        make_trainer("dussss", text_guided_weight=0.0)
    frozen = make_trainer("dussss", use_tg=False)  # f_g kept as loaded: no optimiser, no loss
    assert frozen.decoder_optimizer is None and frozen.decoder_loss_function is None
    assert frozen.optimizers() == [frozen.optimizer]
    with pytest.raises(ConfigError, match="use_merged or use_text_loss"):
        make_trainer("dussss", use_merged=False, use_text_loss=False)


def test_text_guided_weight_scales_only_f_g_objective():
    full = first_step(make_trainer("dussss"))
    off = first_step(make_trainer("dussss", text_guided_weight=0.0, grounding_supervision_weight=1.0))
    half = first_step(make_trainer("dussss", text_guided_weight=0.5, grounding_supervision_weight=1.0))
    # the student's step does not depend on f_g's objective
    assert_same(params(full.network), params(off.network))
    # L_tg is still reported, and its weight changes f_g's update
    assert "loss_tg" in off.state.output[0]
    dec_off, dec_half = params(off.grounding_decoder), params(half.grounding_decoder)
    assert any(not torch.equal(dec_off[k], dec_half[k]) for k in dec_off)


def test_cutmix_mixes_every_refined_pseudo_label_with_the_student_boxes(monkeypatch):
    """The VLM sees the clean images; each consistency target is the student's CutMix of the refined label."""
    draws, refined = [], []
    real_draw = student_views_module.draw_cutmix
    monkeypatch.setattr(
        student_views_module, "draw_cutmix", lambda *a, **k: draws.append(real_draw(*a, **k)) or draws[-1]
    )
    recording = RecordingLoss()
    trainer = make_trainer("dussss", batch_u=4, student_perturbation=CutMix(), consistency_loss_function=recording)
    forward = trainer.refiner.forward
    trainer.refiner.forward = lambda *a, **k: refined.append(forward(*a, **k)) or refined[-1]
    first_step(trainer)
    (draw,), (refinement,) = draws, refined
    torch.testing.assert_close(recording.targets[0], draw.apply(refinement.merged))
    torch.testing.assert_close(recording.targets[1], draw.apply(refinement.text_mask))


def test_consistency_loss_function_is_used_for_both_unlabeled_terms():
    calls: list[str] = []

    class Recording(torch.nn.Module):
        def __init__(self, name: str):
            super().__init__()
            self.name, self.inner = name, SegmentationLoss()

        def forward(self, logits, target):
            calls.append(self.name)
            return self.inner(logits, target)

    first_step(make_trainer("dussss", loss_function=Recording("sup"), consistency_loss_function=Recording("semi")))
    assert calls.count("sup") == 1  # L_sup only
    assert calls.count("semi") == 2  # L_merged and L_text


def test_grounding_supervision_shares_one_vlm_forward_and_matches_a_separate_one():
    trainer = make_trainer("dussss", grounding_supervision_weight=1.0, n_unlabeled=4, batch_u=2)
    before = copy.deepcopy(trainer.refiner)
    calls: list[int] = []
    original = trainer.refiner.ground

    def counting_ground(images, texts, boxes=None):
        calls.append(images.shape[0])
        return original(images, texts, boxes)

    trainer.refiner.ground = counting_ground
    first_step(trainer)
    assert calls == [2 + 1], "labeled (1) and unlabeled (2) images must go through the VLM and f_g together"
    out = trainer.state.output[0]
    # L_ground from the joint forward equals L_ground from a forward on the labeled images alone
    # (outputs are decollated: one dict per labeled image, without the batch dimension)
    separate = before.train(True).ground(out["image"][None], [TEXTS[0]])  # the first labeled text
    expected = SegmentationLoss()(separate.text_logits, out["label"][None])
    assert float(out["loss_ground"]) == pytest.approx(expected.item(), rel=1e-4)


def test_confidence_masking_works_with_refined_labels():
    trainer = first_step(
        make_trainer(
            "dussss", ignore_uncertain_pixels=True, pseudo_label_threshold=0.9, grounding_supervision_weight=1.0
        )
    )
    assert math.isfinite(float(trainer.state.output[0]["loss"]))


def test_patch_batches_are_grounded_on_the_whole_image_and_decoded_on_the_patch():
    """With a grounding context (patch training) the VLM reads the whole images (``vlm_image``) and f_g decodes the
    region of each patch (``crop_box``) at the refiner's crop size; the text mask is that decoding brought to the
    patch size; f_g's supervision uses the labeled patches' regions of the whole images and masks."""
    whole, patch, crop = 32, 16, 8

    def items(n, labeled, seed):
        g = torch.Generator().manual_seed(seed)
        out = []
        for i in range(n):
            img = torch.rand(1, whole, whole, generator=g)
            top, left = 8 * (i % 2), 4 * (i % 3)
            it = {
                "image": img[:, top : top + patch, left : left + patch],
                "text": TEXTS[i % len(TEXTS)],
                "vlm_image": img,
                "crop_box": torch.tensor([top / whole, left / whole, patch / whole, patch / whole]),
            }
            if labeled:
                it["label"] = (it["image"] > 0.6).float()
                it["vlm_label"] = (img > 0.6).float()
            out.append(it)
        return out

    trainer = make_trainer(
        "dussss", grounding_supervision_weight=1.0, unlabeled_loader=DataLoader(items(4, False, 1), batch_size=2)
    )
    trainer.data_loader = DataLoader(items(2, True, 0), batch_size=1)
    refiner = trainer.refiner
    refiner.crop_size = (crop, crop)
    before = copy.deepcopy(refiner)
    grounded, refined = [], []
    original_ground, original_forward = refiner.ground, refiner.forward

    def ground(images, texts, boxes=None):
        result = original_ground(images, texts, boxes)
        grounded.append((images.shape, None if boxes is None else boxes.clone(), result))
        return result

    refiner.ground = ground
    refiner.forward = lambda *a, **k: refined.append((a[2].shape, original_forward(*a, **k))) or refined[-1][1]
    first_step(trainer)
    # one fused forward: 2 unlabeled + 1 labeled WHOLE images, each with its patch's box
    ((shape, boxes, result),) = grounded
    assert shape == torch.Size([3, 1, whole, whole]) and boxes.shape == (3, 4)
    assert result.text_logits.shape == (3, 1, crop, crop)
    torch.testing.assert_close(boxes[:2], trainer.state.unlabeled_batch["crop_box"])
    teacher_shape, refinement = refined[0]
    assert teacher_shape == refinement.text_mask.shape == torch.Size([2, 1, patch, patch])
    # the patch's text mask is f_g's decoding of its region, brought to the patch size
    with torch.no_grad():
        expected = before.eval().ground(trainer.state.unlabeled_batch["vlm_image"], trainer.state.unlabeled_batch["text"],
                                        trainer.state.unlabeled_batch["crop_box"]).text_logits  # fmt: skip
    expected = torch.nn.functional.interpolate(expected, size=(patch, patch), mode="bilinear", align_corners=False)
    torch.testing.assert_close(refinement.text_mask, torch.sigmoid(expected), rtol=1e-4, atol=1e-5)
    assert "loss_ground" in trainer.state.output[0]


def test_output_reports_the_foreground_share_of_each_consistency_target():
    recording = RecordingLoss()
    trainer = first_step(make_trainer("dussss", pseudo_label_threshold=0.6, consistency_loss_function=recording))
    out = trainer.state.output[0]
    for name, target in zip(["merged", "text"], recording.targets):
        assert float(out[f"fg_fraction_{name}"]) == pytest.approx(float(target.mean()))
    assert not any(k.startswith("fg_fraction_") for k in first_step(make_trainer("supervised")).state.output[0])
