"""The student's perturbations: CutMix between unlabeled images, copy-paste between labeled and unlabeled images
(BCP); each carries every pseudo label onto the student's view and leaves the teacher's view clean."""

from __future__ import annotations

import pytest
import torch
from stage2_fixtures import RecordingLoss, first_step, make_data, make_trainer
from torch.utils.data import DataLoader

import dussss_monai.engines.student_views as student_views_module
from dussss_monai.engines import CopyPaste, CutMix, LabeledBatch, UnlabeledBatch
from dussss_monai.errors import ConfigError
from dussss_monai.losses import ProbabilityMSELoss


def test_cutmix_mixes_the_student_input_and_the_pseudo_label_with_the_same_boxes(monkeypatch):
    draws, student_inputs, teacher_io = [], [], []
    real_draw = student_views_module.draw_cutmix
    monkeypatch.setattr(
        student_views_module, "draw_cutmix", lambda *a, **k: draws.append(real_draw(*a, **k)) or draws[-1]
    )
    recording = RecordingLoss()
    trainer = make_trainer(
        "mean_teacher", batch_u=4, student_perturbation=CutMix(), consistency_loss_function=recording
    )
    trainer.network.register_forward_pre_hook(lambda m, a: student_inputs.append(a[0].detach().clone()))
    trainer.teacher.register_forward_hook(
        lambda m, a, out: teacher_io.append((a[0].detach().clone(), out.detach().clone()))
    )
    first_step(trainer)
    (draw,) = draws
    clean = trainer.state.unlabeled_batch["image"]
    torch.testing.assert_close(teacher_io[0][0], clean)
    torch.testing.assert_close(student_inputs[1], draw.apply(clean))  # [0] is the labeled batch
    assert not torch.equal(student_inputs[1], clean)
    (target,) = recording.targets
    torch.testing.assert_close(target, draw.apply(torch.sigmoid(teacher_io[0][1])))


def test_cutmix_leaves_a_batch_of_one_image_unmixed():
    student_inputs = []
    trainer = make_trainer("mean_teacher", batch_u=1, student_perturbation=CutMix())
    trainer.network.register_forward_pre_hook(lambda m, a: student_inputs.append(a[0].detach().clone()))
    first_step(trainer)
    torch.testing.assert_close(student_inputs[1], trainer.state.unlabeled_batch["image"])


def _batches(n_l: int = 2, n_u: int = 3, size: int = 12):
    g = torch.Generator().manual_seed(0)
    x_l, x_u = torch.rand(n_l, 1, size, size, generator=g), torch.rand(n_u, 1, size, size, generator=g) + 2.0
    y_l = (torch.rand(n_l, 1, size, size, generator=g) > 0.5).float()
    return LabeledBatch(x_l, y_l, {}), UnlabeledBatch(x_u, x_u, {})


def test_copy_paste_mixes_labeled_and_unlabeled_both_ways_with_ground_truth_where_labeled():
    torch.manual_seed(0)
    labeled, unlabeled = _batches()
    view = CopyPaste(side_fraction=0.5, unlabeled_weight=0.25)(unlabeled, labeled)
    assert view.images.shape == (6, 1, 12, 12) and view.weight is not None
    pseudo = torch.full((3, 1, 12, 12), 0.7)
    target = view.carry(pseudo)
    for i in range(3):
        j = i % 2  # unlabeled i is paired with labeled i mod 2
        box = view.images[i] < 2.0  # labeled pixels (values < 1) pasted into the unlabeled image (values >= 2)
        assert 0 < int(box.sum()) == 36  # a 6 x 6 box: half of each side
        outside = view.images[3 + i] < 2.0  # the other direction: labeled everywhere but the box
        assert torch.equal(outside, ~box)
        assert torch.equal(target[i][box], labeled.masks[j][box]) and bool((target[i][~box] == 0.7).all())
        assert torch.equal(target[3 + i][~box], labeled.masks[j][~box]) and bool((target[3 + i][box] == 0.7).all())
        assert bool((view.weight[i][box] == 1).all()) and bool((view.weight[i][~box] == 0.25).all())
        assert bool((view.weight[3 + i][box] == 0.25).all()) and bool((view.weight[3 + i][~box] == 1).all())


def test_copy_paste_checks_its_settings_and_the_loss_it_needs():
    with pytest.raises(ConfigError, match="side_fraction"):
        CopyPaste(side_fraction=1.0)
    with pytest.raises(ConfigError, match="unlabeled_weight"):
        CopyPaste(unlabeled_weight=-1)
    labeled, unlabeled = _batches()
    with pytest.raises(ConfigError, match="one size"):
        CopyPaste()(UnlabeledBatch(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), {}), labeled)
    with pytest.raises(ConfigError, match="mask"):  # the pixel weights need a loss that takes them
        make_trainer("mean_teacher", student_perturbation=CopyPaste(),
                     consistency_loss_function=lambda logits, target: (logits - target).abs().mean())  # fmt: skip


def test_copy_paste_trains_the_student_on_twice_the_unlabeled_batch_with_weighted_pixels():
    recording = RecordingLoss()
    unlabeled = DataLoader(make_data(4, False, "u", seed=1), batch_size=2)
    trainer = make_trainer("mean_teacher", unlabeled_loader=unlabeled, student_perturbation=CopyPaste(),
                           consistency_loss_function=recording)  # fmt: skip
    sizes = []
    trainer.network.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[0]))
    first_step(trainer)
    assert sizes == [1, 4]  # the labeled batch, then 2 x 2 mixed images
    (target, weight) = recording.calls[0]
    assert weight is not None and set(torch.unique(weight).tolist()) == {0.5, 1.0}
    assert set(torch.unique(target[weight == 1]).tolist()) <= {0.0, 1.0}  # ground truth where labeled
    assert make_trainer("mean_teacher", student_perturbation=CopyPaste(),
                        consistency_loss_function=ProbabilityMSELoss()) is not None  # fmt: skip
