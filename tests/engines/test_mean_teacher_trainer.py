"""MeanTeacherTrainer (stage 2 without text): EMA teacher, consistency routing, unlabeled stream, perturbations,
pseudo-label options, resume."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from stage2_fixtures import (
    RecordingLoss,
    assert_same,
    first_step,
    grads,
    make_data,
    make_trainer,
    params,
    tiny_unet,
)
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from dussss_monai.bundle import checkpoint_objects
from dussss_monai.engines import MeanTeacherTrainer, PseudoLabels
from dussss_monai.engines.schedules import ConsistencyWeight, sigmoid_rampup
from dussss_monai.errors import CheckpointError, ConfigError
from dussss_monai.handlers.checkpoint import SafeCheckpointLoader
from dussss_monai.inferers import FLIPS_2D, FlipTTAInferer
from dussss_monai.losses.segmentation import SegmentationLoss


def test_sigmoid_rampup_and_consistency_weight():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == sigmoid_rampup(500, 100) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0
    w = ConsistencyWeight(max_weight=0.5, rampup_steps=10)
    assert w(0) == pytest.approx(0.5 * math.exp(-5)) and w(10) == 0.5
    assert [w(s) for s in range(11)] == sorted(w(s) for s in range(11))
    with pytest.raises(ValueError):
        ConsistencyWeight(rampup_steps=-1)


def test_teacher_starts_as_exact_copy_even_when_given_separately():
    trainer = make_trainer("mean_teacher")
    assert trainer.teacher is not trainer.network
    assert_same(params(trainer.teacher), params(trainer.network))
    assert all(not p.requires_grad for p in trainer.teacher.parameters())
    torch.manual_seed(123)
    other = tiny_unet()
    trainer = make_trainer("mean_teacher", teacher=other)
    assert trainer.teacher is other
    assert_same(params(other), params(trainer.network))


def test_default_epoch_length_covers_the_longer_stream():
    assert make_trainer("mean_teacher", n_unlabeled=7, batch_u=2).state.epoch_length == 4  # ceil(7 / 2) > 2 labeled


def test_ema_formula_and_teacher_never_gets_gradients():
    trainer = make_trainer("mean_teacher", ema_decay=0.6, max_epochs=2)  # 2 x 2 iterations: alpha = 0, 0.5, 0.6, 0.6
    before: dict = {}
    records = []

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def _before(engine):
        before["teacher"] = params(engine.teacher)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _after(engine):
        records.append((engine.state.iteration, before["teacher"], params(engine.teacher), params(engine.network)))

    trainer.run()
    assert [r[0] for r in records] == [1, 2, 3, 4]
    for (it, t_before, t_after, student), alpha in zip(records, [0.0, 0.5, 0.6, 0.6]):
        for k in t_after:
            torch.testing.assert_close(
                t_after[k], alpha * t_before[k] + (1 - alpha) * student[k], msg=f"iteration {it}: {k}"
            )
    assert_same(records[0][2], records[0][3])  # first update copies the student
    assert not torch.equal(records[-1][2]["model.0.conv.weight"], records[-1][3]["model.0.conv.weight"])
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())


def _first_grads(trainer) -> dict:
    out: dict = {}

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def _grab(engine):
        if engine.state.iteration == 1:
            out.update(grads(engine.network))
            engine.terminate()

    trainer.run()
    return out


def test_consistency_reaches_the_student_and_weight_zero_is_supervised_training():
    """With ``w = 0`` the mean teacher takes exactly MONAI's SupervisedTrainer's steps; with ``w > 0`` the
    consistency term changes the student's gradient."""
    sup = _first_grads(make_trainer("supervised"))
    assert_same(_first_grads(make_trainer("mean_teacher", consistency_weight=0.0)), sup)
    mt = _first_grads(make_trainer("mean_teacher"))
    assert sum(float((mt[k] - sup[k]).abs().sum()) for k in sup) > 1e-6
    supervised, silent = (
        make_trainer("supervised", max_epochs=2),
        make_trainer("mean_teacher", max_epochs=2, consistency_weight=0.0),
    )
    supervised.run()
    silent.run()
    assert_same(
        {k: v for k, v in params(silent.network).items() if "running" not in k and "num_batches" not in k},
        {k: v for k, v in params(supervised.network).items() if "running" not in k and "num_batches" not in k},
    )


class RecordingDistributedSampler(DistributedSampler):
    def __init__(self, dataset):
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)
        super().set_epoch(epoch)


def test_every_unlabeled_image_is_seen_within_ceil_n_over_batch_iterations():
    data = make_data(7, False, "u")
    sampler = RecordingDistributedSampler(data)
    loader = DataLoader(data, batch_size=2, sampler=sampler)
    trainer = make_trainer("mean_teacher", unlabeled_loader=loader, max_epochs=2)  # epoch_length = ceil(7/2) = 4
    seen: list[list[str]] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(list(e.state.unlabeled_batch["name"])))
    trainer.run()
    assert trainer.state.epoch_length == 4 and len(seen) == 8
    first_pass = [n for batch in seen[:4] for n in batch]
    assert sorted(first_pass) == sorted(d["name"] for d in data)  # all 7, within ceil(7/2) = 4 iterations
    assert Counter(n for batch in seen for n in batch) == Counter({d["name"]: 2 for d in data})
    assert sampler.epochs == [0, 1]  # a new pass re-seeds the distributed shuffle
    assert seen[:4] != seen[4:]


def test_output_dict_holds_the_terms_and_the_ramped_weight():
    trainer = make_trainer("mean_teacher", consistency_weight=ConsistencyWeight(1.0, rampup_steps=10))
    weights = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: weights.append(e.state.output[0]["weight"]))
    trainer.run()
    out = trainer.state.output[0]  # decollated: one dict per labeled image
    for key in ("image", "label", "pred", "loss", "loss_sup", "loss_semi", "weight", "fg_fraction_teacher"):
        assert key in out, key
    torch.testing.assert_close(out["loss"], out["loss_sup"] + out["weight"] * out["loss_semi"])
    assert weights == pytest.approx([sigmoid_rampup(0, 10), sigmoid_rampup(1, 10)])


def test_hard_pseudo_labels_at_the_threshold():
    trainer = make_trainer("mean_teacher", pseudo_label_threshold=0.5)
    probs = torch.tensor([0.2, 0.5, 0.51, 0.9])
    assert torch.equal(trainer._target(probs), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.equal(make_trainer("mean_teacher")._target(probs), probs)  # default: soft targets
    with pytest.raises(ConfigError, match="pseudo_label_threshold"):
        make_trainer("mean_teacher", pseudo_label_threshold=1.5)


def test_student_noise_perturbs_the_student_input_only():
    seen: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    trainer = make_trainer("mean_teacher", student_noise_std=0.5)
    trainer.network.register_forward_pre_hook(lambda m, a: seen["student"].append(a[0].detach().clone()))
    trainer.teacher.register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[0].detach().clone()))
    first_step(trainer)
    clean = trainer.state.unlabeled_batch["image"]
    torch.testing.assert_close(seen["teacher"][0], clean)  # the teacher sees the clean image
    # the student's second forward (after the labeled batch) is the unlabeled batch plus noise
    noise = seen["student"][1] - clean
    assert 0.3 < float(noise.std()) < 0.7
    with pytest.raises(ConfigError, match="student_noise_std"):
        make_trainer("mean_teacher", student_noise_std=-1.0)


def test_student_image_key_gives_the_student_its_own_view():
    """Weak-to-strong consistency: the teacher sees ``image``, the student the pipeline's ``image_strong``."""
    items = make_data(4, False, "u", seed=1)
    for item in items:
        item["image_strong"] = 1.0 - item["image"]
    seen: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    trainer = make_trainer(
        "mean_teacher", unlabeled_loader=DataLoader(items, batch_size=2), student_image_key="image_strong"
    )
    trainer.network.register_forward_pre_hook(lambda m, a: seen["student"].append(a[0].detach().clone()))
    trainer.teacher.register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[0].detach().clone()))
    first_step(trainer)
    batch = trainer.state.unlabeled_batch
    torch.testing.assert_close(seen["teacher"][0], batch["image"])
    torch.testing.assert_close(seen["student"][1], batch["image_strong"])


def test_teacher_inferer_predicts_the_pseudo_labels_and_the_student_keeps_its_own():
    """A flip-TTA teacher sees the four flips of the unlabeled batch; the student still one view per batch."""
    seen: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    trainer = make_trainer("mean_teacher", teacher_inferer=FlipTTAInferer())
    trainer.network.register_forward_pre_hook(lambda m, a: seen["student"].append(a[0].detach().clone()))
    trainer.teacher.register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[0].detach().clone()))
    first_step(trainer)
    clean = trainer.state.unlabeled_batch["image"]
    assert len(seen["student"]) == 2  # the labeled and the unlabeled batch
    assert len(seen["teacher"]) == 4
    for view, dims in zip(seen["teacher"], FLIPS_2D):
        torch.testing.assert_close(view, clean.flip(dims) if dims else clean)
    default = make_trainer("mean_teacher")
    assert default.teacher_inferer is default.inferer


def test_consistency_loss_function_is_used_for_unlabeled_terms_only():
    calls: list[str] = []

    class Recording(torch.nn.Module):
        def __init__(self, name: str):
            super().__init__()
            self.name, self.inner = name, SegmentationLoss()

        def forward(self, logits, target):
            calls.append(self.name)
            return self.inner(logits, target)

    first_step(
        make_trainer("mean_teacher", loss_function=Recording("sup"), consistency_loss_function=Recording("semi"))
    )
    assert calls == ["sup", "semi"]
    calls.clear()
    first_step(make_trainer("mean_teacher", loss_function=Recording("sup")))
    assert calls == ["sup", "sup"]  # default: the same loss for every term


def test_ignore_uncertain_pixels_keeps_only_confident_pseudo_labels():
    """Confidence masking: pixels with a pseudo-label probability in [1 - p, p] do not reach the student."""
    recording = RecordingLoss()
    trainer = make_trainer(
        "mean_teacher", pseudo_label_threshold=0.9, ignore_uncertain_pixels=True, consistency_loss_function=recording
    )
    student = torch.zeros(1, 1, 1, 4, requires_grad=True)
    probs = torch.tensor([0.05, 0.5, 0.89, 0.95]).view(1, 1, 1, 4)
    trainer._consistency(student, probs)[0].backward()
    target, mask = recording.calls[-1]
    assert torch.equal(mask.flatten(), torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.equal(target.flatten(), torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert student.grad.flatten()[1:3].abs().sum() == 0 and student.grad.flatten()[[0, 3]].abs().sum() > 0
    # without it every pixel counts, the uncertain ones as background
    plain = make_trainer("mean_teacher", pseudo_label_threshold=0.9)
    s2 = torch.zeros(1, 1, 1, 4, requires_grad=True)
    plain._consistency(s2, probs)[0].backward()
    assert s2.grad.flatten()[1].abs() > 0


def test_ignore_uncertain_pixels_needs_a_threshold_and_a_maskable_loss():
    with pytest.raises(ConfigError, match="pseudo_label_threshold"):
        make_trainer("mean_teacher", ignore_uncertain_pixels=True)
    with pytest.raises(ConfigError, match="pseudo_label_threshold"):
        make_trainer("mean_teacher", ignore_uncertain_pixels=True, pseudo_label_threshold=0.4)
    with pytest.raises(ConfigError, match="mask"):
        make_trainer(
            "mean_teacher",
            ignore_uncertain_pixels=True,
            pseudo_label_threshold=0.9,
            consistency_loss_function=lambda logits, target: (logits - target).abs().mean(),
        )
    with pytest.raises(ConfigError, match="ema_decay"):
        make_trainer("mean_teacher", ema_decay=1.5)


def test_output_reports_the_foreground_share_of_the_consistency_target():
    recording = RecordingLoss()
    trainer = first_step(make_trainer("mean_teacher", pseudo_label_threshold=0.6, consistency_loss_function=recording))
    assert float(trainer.state.output[0]["fg_fraction_teacher"]) == pytest.approx(float(recording.targets[0].mean()))


def test_resume_refuses_checkpoint_missing_an_object(tmp_path):
    first = make_trainer("mean_teacher")
    path = tmp_path / "partial.pt"
    torch.save({"network": first.network.state_dict(), "trainer": first.state_dict()}, path)
    resumed = make_trainer("mean_teacher")
    assert set(checkpoint_objects(resumed)) == {"network", "optimizer", "trainer", "teacher"}
    with pytest.raises(CheckpointError, match="teacher"):
        SafeCheckpointLoader(path, checkpoint_objects(resumed))(resumed)


def test_hooks_are_the_only_method_specific_parts():
    """The hook a subclass overrides changes the targets the student learns from, nothing else."""

    class ZeroTargets(MeanTeacherTrainer):
        def pseudo_labels(self, unlabeled, teacher_logits, labeled):
            return PseudoLabels({"zero": torch.zeros_like(teacher_logits)})

    recording = RecordingLoss()
    torch.manual_seed(0)
    base = make_trainer("mean_teacher")
    trainer = ZeroTargets(
        "cpu",
        1,
        base.data_loader,
        base.network,
        base.optimizer,
        SegmentationLoss(),
        unlabeled_data_loader=base.unlabeled.loader,
        consistency_loss_function=recording,
    )
    first_step(trainer)
    (target,) = recording.targets
    assert float(target.abs().sum()) == 0.0 and "fg_fraction_zero" in trainer.state.output[0]
