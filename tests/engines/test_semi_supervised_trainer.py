"""SemiSupervisedTrainer (stage 2): EMA teacher, loss routing, unlabeled stream, resume, non-finite guard."""

from __future__ import annotations

import copy
import glob
import math
import os
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import MeanDice, from_engine
from monai.networks.nets import UNet
from monai.transforms import Activationsd, AsDiscreted, Compose
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from dussss_monai.engines.schedules import ConsistencyWeight, sigmoid_rampup
from dussss_monai.engines.semi_supervised_trainer import SemiSupervisedTrainer, default_epoch_length
from dussss_monai.errors import CheckpointError, ConfigError, DuSSSError
from dussss_monai.handlers.checkpoint import AtomicCheckpointSaver, SafeCheckpointLoader
from dussss_monai.losses.segmentation import SegmentationLoss
from dussss_monai.losses.text_guided import TextGuidedLoss
from dussss_monai.networks.grounding_decoder import GroundingDecoder
from dussss_monai.refiner import VLMPseudoLabelRefiner
from dussss_monai.utils.io import safe_torch_load

SIZE = 32
TEXTS = ["left lung", "right lung", "both lungs", "no finding"]


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


def _data(n: int, labeled: bool, prefix: str, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        img = torch.rand(1, SIZE, SIZE, generator=g)
        item = {"image": img, "text": TEXTS[i % len(TEXTS)], "name": f"{prefix}{i}.png"}
        if labeled:
            item["label"] = (img > 0.6).float()
        items.append(item)
    return items


def _make(
    method: str = "dussss",
    seed: int = 0,
    n_labeled: int = 2,
    n_unlabeled: int = 4,
    batch_u: int = 2,
    max_epochs: int = 1,
    unlabeled_loader=None,
    lr: float = 1e-2,
    decoder_lr: float = 1e-2,
    **kw,
) -> SemiSupervisedTrainer:
    torch.manual_seed(seed)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16, 32), strides=(2, 2))
    refiner = decoder_opt = None
    if method == "dussss":
        refiner = VLMPseudoLabelRefiner(FakeVLM(), GroundingDecoder(12, 8, hidden_channels=8))
        decoder_opt = torch.optim.Adam(refiner.grounding_decoder.parameters(), lr=decoder_lr)
    labeled = DataLoader(_data(n_labeled, True, "l"), batch_size=1, shuffle=False)
    if unlabeled_loader is None and method != "supervised":
        unlabeled_loader = DataLoader(_data(n_unlabeled, False, "u", seed=1), batch_size=batch_u, shuffle=False)
    kw.setdefault("consistency_weight", 1.0)
    kw.setdefault("loss_function", SegmentationLoss())
    return SemiSupervisedTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=labeled,
        unlabeled_data_loader=unlabeled_loader,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=lr),
        method=method,
        refiner=refiner,
        decoder_optimizer=decoder_opt,
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


def _params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for k, p in module.named_parameters()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


# ---------------------------------------------------------------- schedules
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


# ---------------------------------------------------------------- construction
def test_teacher_starts_as_exact_copy_even_when_given_separately():
    trainer = _make("mean_teacher")
    assert trainer.teacher is not trainer.network
    _assert_same(_params(trainer.teacher), _params(trainer.network))
    assert all(not p.requires_grad for p in trainer.teacher.parameters())
    torch.manual_seed(123)
    other = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16, 32), strides=(2, 2))
    trainer = _make("mean_teacher", teacher=other)
    assert trainer.teacher is other
    _assert_same(_params(other), _params(trainer.network))


def test_config_errors():
    with pytest.raises(ConfigError, match="method"):
        _make("fixmatch")
    with pytest.raises(ConfigError, match="unlabeled"):
        SemiSupervisedTrainer("cpu", 1, [], nn.Conv2d(1, 1, 1), torch.optim.SGD([nn.Parameter(torch.zeros(1))], 0.1), SegmentationLoss(), method="mean_teacher")
    with pytest.raises(ConfigError, match="refiner"):
        SemiSupervisedTrainer("cpu", 1, [], nn.Conv2d(1, 1, 1), torch.optim.SGD([nn.Parameter(torch.zeros(1))], 0.1), SegmentationLoss(), unlabeled_data_loader=[], method="dussss")
    with pytest.raises(ConfigError, match="use_merged or use_text_loss"):
        _make("dussss", use_merged=False, use_text_loss=False)


def test_default_epoch_length_covers_the_longer_stream():
    labeled = DataLoader(list(range(3)), batch_size=1)
    unlabeled = DataLoader(list(range(7)), batch_size=2)
    assert default_epoch_length(labeled, unlabeled) == 4  # ceil(7 / 2)
    assert default_epoch_length(labeled) == 3
    assert _make("mean_teacher", n_unlabeled=7, batch_u=2).state.epoch_length == 4


# ---------------------------------------------------------------- EMA teacher
def test_ema_formula_and_teacher_never_gets_gradients():
    trainer = _make("dussss", ema_decay=0.6, max_epochs=2)  # 2 x 2 iterations: alpha = 0, 0.5, 0.6, 0.6
    before: dict = {}
    records = []

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def _before(engine):
        before["teacher"] = _params(engine.teacher)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _after(engine):
        records.append((engine.state.iteration, before["teacher"], _params(engine.teacher), _params(engine.network)))

    trainer.run()
    assert [r[0] for r in records] == [1, 2, 3, 4]
    for (it, t_before, t_after, student), alpha in zip(records, [0.0, 0.5, 0.6, 0.6]):
        for k in t_after:
            torch.testing.assert_close(t_after[k], alpha * t_before[k] + (1 - alpha) * student[k], msg=f"iteration {it}: {k}")
    _assert_same(records[0][2], records[0][3])  # first update copies the student
    assert not torch.equal(records[-1][2]["model.0.conv.weight"], records[-1][3]["model.0.conv.weight"])
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())


# ---------------------------------------------------------------- loss routing
def _first_student_grads(trainer: SemiSupervisedTrainer) -> dict:
    out: dict = {}

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def _grab(engine):
        if engine.state.iteration == 1:
            out.update(_grads(engine.network))
            if engine.state.unlabeled_batch is not None:
                out["_x_u"] = engine.state.unlabeled_batch["image"]
                out["_texts"] = list(engine.state.unlabeled_batch["text"])
            out["_decoder"] = _grads(engine.grounding_decoder) if engine.grounding_decoder is not None else None
            engine.terminate()

    trainer.run()
    return out


@pytest.mark.parametrize("term", ["merged", "text"])
def test_l_merged_and_l_text_reach_the_student(term):
    """Gradient of (L_sup + w L_semi) minus that of L_sup alone is w * dL_term/dtheta, and non-zero."""
    sup = _first_student_grads(_make("supervised"))
    kw = {"use_merged": term == "merged", "use_text_loss": term == "text", "use_tg": False}
    semi_trainer = _make("dussss", consistency_weight=0.7, **kw)
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
    expected = _grads(start_student)
    for k in expected:
        torch.testing.assert_close(diff[k], expected[k], rtol=1e-4, atol=1e-6, msg=k)


def test_mean_teacher_consistency_reaches_the_student():
    sup = _first_student_grads(_make("supervised"))
    mt = _first_student_grads(_make("mean_teacher"))
    assert sum(float((mt[k] - sup[k]).abs().sum()) for k in sup if not k.startswith("_")) > 1e-6


def test_grounding_decoder_gets_exactly_the_l_tg_gradient():
    trainer = _make("dussss")
    refiner = copy.deepcopy(trainer.refiner)
    got = _first_student_grads(trainer)
    g = refiner.ground(got["_x_u"], got["_texts"])
    TextGuidedLoss()(g.pixel_features, g.feature_logits, g.text_embed, got["_texts"]).backward()
    expected = _grads(refiner.grounding_decoder)
    assert any(float(v.abs().sum()) > 0 for v in expected.values())
    for k in expected:  # the student's losses add nothing to f_g's gradient
        torch.testing.assert_close(got["_decoder"][k], expected[k], rtol=1e-5, atol=1e-7, msg=k)
    assert all(p.grad is None for p in trainer.refiner.vlm.parameters())


def test_l_tg_never_reaches_the_student_and_f_g_changes_only_with_l_tg():
    with_tg = _make("dussss", max_epochs=1)
    without_tg = _make("dussss", max_epochs=1, use_tg=False)
    dec0 = _params(with_tg.grounding_decoder)
    _assert_same(dec0, _params(without_tg.grounding_decoder))
    for t in (with_tg, without_tg):
        t.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: e.terminate())
        t.run()
    # one identical step of the student with and without L_tg: L_tg has no path into the student
    _assert_same(_params(with_tg.network), _params(without_tg.network))
    _assert_same(_params(with_tg.teacher), _params(without_tg.teacher))
    # f_g moves only through its own optimiser and L_tg
    assert without_tg.decoder_optimizer is None
    _assert_same(_params(without_tg.grounding_decoder), dec0)
    assert all(p.grad is None for p in without_tg.grounding_decoder.parameters())
    assert any(not torch.equal(v, dec0[k]) for k, v in _params(with_tg.grounding_decoder).items())


# ---------------------------------------------------------------- unlabeled stream
class RecordingDistributedSampler(DistributedSampler):
    def __init__(self, dataset):
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)
        super().set_epoch(epoch)


def test_every_unlabeled_image_is_seen_within_ceil_n_over_batch_iterations():
    data = _data(7, False, "u")
    sampler = RecordingDistributedSampler(data)
    loader = DataLoader(data, batch_size=2, sampler=sampler)
    trainer = _make("mean_teacher", unlabeled_loader=loader, max_epochs=2)  # epoch_length = ceil(7/2) = 4
    seen: list[list[str]] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(list(e.state.unlabeled_batch["name"])))
    trainer.run()
    assert trainer.state.epoch_length == 4 and len(seen) == 8
    first_pass = [n for batch in seen[:4] for n in batch]
    assert sorted(first_pass) == sorted(d["name"] for d in data)  # all 7, within ceil(7/2) = 4 iterations
    assert Counter(n for batch in seen for n in batch) == Counter({d["name"]: 2 for d in data})
    assert sampler.epochs == [0, 1]  # a new pass re-seeds the distributed shuffle
    assert seen[:4] != seen[4:]


def test_supervised_without_unlabeled_loader_matches_monai_supervised_trainer():
    ours = _make("supervised", max_epochs=2)
    assert ours.teacher is None and ours.grounding_decoder is None
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16, 32), strides=(2, 2))
    ref = SupervisedTrainer(
        "cpu", 2, DataLoader(_data(2, True, "l"), batch_size=1), net, torch.optim.Adam(net.parameters(), lr=1e-2), SegmentationLoss()
    )
    ours.run()
    ref.run()
    for k, v in _params(ours.network).items():
        torch.testing.assert_close(v, _params(net)[k], msg=k)


def test_output_dict_and_train_metric():
    post = Compose([Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=0.5)])
    trainer = _make(
        "dussss",
        consistency_weight=ConsistencyWeight(1.0, rampup_steps=10),
        postprocessing=post,
        key_train_metric={"train_mean_dice": MeanDice(output_transform=from_engine(["pred", "label"]))},
    )
    weights = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: weights.append(e.state.output[0]["weight"]))
    trainer.run()
    out = trainer.state.output[0]  # decollated: one dict per labeled image
    for key in ("image", "label", "pred", "loss", "loss_sup", "loss_semi", "loss_merged", "loss_text", "loss_tg", "weight"):
        assert key in out, key
    assert out["pred"].shape == (1, SIZE, SIZE)
    expected_total = out["loss_sup"] + out["weight"] * out["loss_semi"]
    torch.testing.assert_close(out["loss"], expected_total)
    torch.testing.assert_close(out["loss_semi"], (out["loss_merged"] + out["loss_text"]) / 2)
    assert weights == pytest.approx([sigmoid_rampup(0, 10), sigmoid_rampup(1, 10)])
    assert 0.0 <= trainer.state.metrics["train_mean_dice"] <= 1.0


# ---------------------------------------------------------------- resume
def test_resume_restores_iteration_teacher_and_optimiser_state(tmp_path):
    first = _make("dussss", max_epochs=2)
    AtomicCheckpointSaver(str(tmp_path), first.checkpoint_objects(), file_prefix="training", save_interval=1, n_saved=1).attach(first)
    first.run()
    files = glob.glob(os.path.join(tmp_path, "*.pt"))
    assert len(files) == 1 and not [f for f in os.listdir(tmp_path) if not f.endswith(".pt")]  # no temp left
    assert set(safe_torch_load(files[0])) == {"network", "optimizer", "trainer", "teacher", "grounding_decoder", "decoder_optimizer"}

    resumed = _make("dussss", seed=99, max_epochs=3)  # different initial weights
    assert not torch.equal(_params(resumed.teacher)["model.0.conv.weight"], _params(first.teacher)["model.0.conv.weight"])
    SafeCheckpointLoader(files[0], resumed.checkpoint_objects()).attach(resumed)
    at_start: dict = {}

    @resumed.on(Events.STARTED)
    def _grab(engine):  # runs after the loader (handlers fire in attachment order)
        at_start.update(
            iteration=engine.state.iteration,
            epoch=engine.state.epoch,
            max_epochs=engine.state.max_epochs,
            teacher=_params(engine.teacher),
            network=_params(engine.network),
            decoder=_params(engine.grounding_decoder),
            optimizer=copy.deepcopy(engine.optimizer.state_dict()),
            decoder_optimizer=copy.deepcopy(engine.decoder_optimizer.state_dict()),
        )

    iterations = []
    resumed.add_event_handler(Events.ITERATION_STARTED, lambda e: iterations.append(e.state.iteration))
    resumed.run()
    assert (at_start["iteration"], at_start["epoch"], at_start["max_epochs"]) == (4, 2, 3)
    _assert_same(at_start["teacher"], _params(first.teacher))
    _assert_same(at_start["network"], _params(first.network))
    _assert_same(at_start["decoder"], _params(first.grounding_decoder))
    for name, opt in (("optimizer", first.optimizer), ("decoder_optimizer", first.decoder_optimizer)):
        ref = opt.state_dict()
        assert at_start[name]["param_groups"] == ref["param_groups"]
        for idx, state in ref["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(at_start[name]["state"][idx][key], value, rtol=0, atol=0)
    assert iterations == [5, 6]  # training continues where it stopped


def test_resume_refuses_checkpoint_missing_an_object(tmp_path):
    first = _make("mean_teacher")
    path = tmp_path / "partial.pt"
    torch.save({"network": first.network.state_dict(), "trainer": first.state_dict()}, path)
    resumed = _make("mean_teacher")
    with pytest.raises(CheckpointError, match="teacher"):
        SafeCheckpointLoader(path, resumed.checkpoint_objects())(resumed)


# ---------------------------------------------------------------- non-finite loss
def test_non_finite_loss_raises_naming_the_iteration_before_any_step():
    holder: dict = {}
    base = SegmentationLoss()

    def loss_fn(pred, target):
        loss = base(pred, target)
        return loss * float("nan") if holder["engine"].state.iteration == 3 else loss

    trainer = _make("dussss", max_epochs=2, loss_function=loss_fn)
    holder["engine"] = trainer
    snapshots: dict = {}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _snap(engine):
        snapshots.update(
            network=_params(engine.network), teacher=_params(engine.teacher), decoder=_params(engine.grounding_decoder)
        )

    with pytest.raises(DuSSSError, match=r"iteration 3\b"):
        trainer.run()
    assert trainer.state.iteration == 3
    _assert_same(_params(trainer.network), snapshots["network"])  # weights of iteration 2, untouched by NaN
    _assert_same(_params(trainer.teacher), snapshots["teacher"])
    _assert_same(_params(trainer.grounding_decoder), snapshots["decoder"])


# ---------------------------------------------------------------- documented choices beyond the paper
def test_grounding_supervision_trains_f_g_and_never_the_student():
    plain = _make("dussss")
    supervised_fg = _make("dussss", grounding_supervision_weight=1.0)
    dec0 = _params(plain.grounding_decoder)
    for t in (plain, supervised_fg):
        t.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: e.terminate())
        t.run()
    # the student's step is identical with and without L_ground: L_ground has no path into the student
    _assert_same(_params(plain.network), _params(supervised_fg.network))
    assert "loss_ground" in supervised_fg.state.output[0] and "loss_ground" not in plain.state.output[0]
    moved_plain = _params(plain.grounding_decoder)
    moved_sup = _params(supervised_fg.grounding_decoder)
    assert any(not torch.equal(moved_plain[k], moved_sup[k]) for k in dec0), "L_ground must change f_g's step"


def test_grounding_supervision_needs_l_tg_and_a_non_negative_weight():
    assert _make("dussss", use_tg=False, grounding_supervision_weight=1.0).grounding_supervision_weight == 0.0
    with pytest.raises(ConfigError, match="grounding_supervision_weight"):
        _make("dussss", grounding_supervision_weight=-1.0)


def test_hard_pseudo_labels_at_the_threshold():
    trainer = _make("mean_teacher", pseudo_label_threshold=0.5)
    probs = torch.tensor([0.2, 0.5, 0.51, 0.9])
    assert torch.equal(trainer._target(probs), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.equal(_make("mean_teacher")._target(probs), probs)  # default: soft targets
    with pytest.raises(ConfigError, match="pseudo_label_threshold"):
        _make("mean_teacher", pseudo_label_threshold=1.5)


def _first_step(trainer: SemiSupervisedTrainer) -> SemiSupervisedTrainer:
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: e.terminate())
    trainer.run()
    return trainer


def test_text_guided_weight_scales_only_f_g_objective():
    full = _first_step(_make("dussss"))
    off = _first_step(_make("dussss", text_guided_weight=0.0, grounding_supervision_weight=1.0))
    half = _first_step(_make("dussss", text_guided_weight=0.5, grounding_supervision_weight=1.0))
    # the student's step does not depend on f_g's objective
    _assert_same(_params(full.network), _params(off.network))
    # L_tg is still reported, and its weight changes f_g's update
    assert "loss_tg" in off.state.output[0]
    dec_off, dec_half = _params(off.grounding_decoder), _params(half.grounding_decoder)
    assert any(not torch.equal(dec_off[k], dec_half[k]) for k in dec_off)


def test_text_guided_weight_rejects_negative_and_an_objective_less_f_g():
    with pytest.raises(ConfigError, match="text_guided_weight"):
        _make("dussss", text_guided_weight=-0.1)
    with pytest.raises(ConfigError, match="no objective"):
        _make("dussss", text_guided_weight=0.0)
    # with f_g frozen (use_tg off) a zero weight is fine
    assert _make("dussss", use_tg=False, text_guided_weight=0.0).decoder_optimizer is None


def test_student_noise_perturbs_the_student_input_only():
    seen: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    trainer = _make("mean_teacher", student_noise_std=0.5)
    trainer.network.register_forward_pre_hook(lambda m, a: seen["student"].append(a[0].detach().clone()))
    trainer.teacher.register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[0].detach().clone()))
    _first_step(trainer)
    clean = trainer.state.unlabeled_batch["image"]
    torch.testing.assert_close(seen["teacher"][0], clean)  # the teacher sees the clean image
    # the student's second forward (after the labeled batch) is the unlabeled batch plus noise
    noise = seen["student"][1] - clean
    assert 0.3 < float(noise.std()) < 0.7
    with pytest.raises(ConfigError, match="student_noise_std"):
        _make("mean_teacher", student_noise_std=-1.0)


@pytest.mark.parametrize("method", ["mean_teacher", "dussss"])
def test_cutmix_mixes_the_student_input_and_every_pseudo_label_with_the_same_boxes(method, monkeypatch):
    """The teacher (and the VLM) see the clean images; the student sees the CutMix of them, and each consistency
    target is the same CutMix of the pseudo label computed on the clean images."""
    import dussss_monai.engines.semi_supervised_trainer as module

    draws, student_inputs, teacher_io, merged = [], [], [], []
    real_draw = module.draw_cutmix
    monkeypatch.setattr(module, "draw_cutmix", lambda *a, **k: draws.append(real_draw(*a, **k)) or draws[-1])
    recording = RecordingLoss()
    trainer = _make(method, batch_u=4, cutmix=True, consistency_loss_function=recording)
    trainer.network.register_forward_pre_hook(lambda m, a: student_inputs.append(a[0].detach().clone()))
    trainer.teacher.register_forward_hook(lambda m, a, out: teacher_io.append((a[0].detach().clone(), out.detach().clone())))
    if method == "dussss":
        merge = trainer.refiner.merge
        trainer.refiner.merge = lambda t, x: merged.append(merge(t, x)) or merged[-1]
    _first_step(trainer)
    (draw,) = draws
    clean = trainer.state.unlabeled_batch["image"]
    torch.testing.assert_close(teacher_io[0][0], clean)
    torch.testing.assert_close(student_inputs[1], draw.apply(clean))  # [0] is the labeled batch
    assert not torch.equal(student_inputs[1], clean)
    targets = recording.targets
    if method == "mean_teacher":
        (target,) = targets
        torch.testing.assert_close(target, draw.apply(torch.sigmoid(teacher_io[0][1])))
    else:
        torch.testing.assert_close(targets[0], draw.apply(merged[0].merged))
        torch.testing.assert_close(targets[1], draw.apply(merged[0].text_mask))


def test_cutmix_leaves_a_batch_of_one_image_unmixed():
    student_inputs = []
    trainer = _make("mean_teacher", batch_u=1, cutmix=True)
    trainer.network.register_forward_pre_hook(lambda m, a: student_inputs.append(a[0].detach().clone()))
    _first_step(trainer)
    torch.testing.assert_close(student_inputs[1], trainer.state.unlabeled_batch["image"])


def test_consistency_loss_function_is_used_for_unlabeled_terms_only():
    calls: list[str] = []

    class Recording(nn.Module):
        def __init__(self, name: str):
            super().__init__()
            self.name, self.inner = name, SegmentationLoss()

        def forward(self, logits, target):
            calls.append(self.name)
            return self.inner(logits, target)

    _first_step(_make("dussss", loss_function=Recording("sup"), consistency_loss_function=Recording("semi")))
    assert calls.count("sup") == 1  # L_sup only
    assert calls.count("semi") == 2  # L_merged and L_text
    calls.clear()
    _first_step(_make("mean_teacher", loss_function=Recording("sup")))
    assert calls == ["sup", "sup"]  # default: the same loss for every term


def test_grounding_supervision_shares_one_vlm_forward_and_matches_a_separate_one():
    trainer = _make("dussss", grounding_supervision_weight=1.0, n_unlabeled=4, batch_u=2)
    before = copy.deepcopy(trainer.refiner)
    calls: list[int] = []
    original = trainer.refiner.ground

    def counting_ground(images, texts):
        calls.append(images.shape[0])
        return original(images, texts)

    trainer.refiner.ground = counting_ground
    _first_step(trainer)
    assert calls == [2 + 1], "labeled (1) and unlabeled (2) images must go through the VLM and f_g together"
    out = trainer.state.output[0]
    # L_ground from the joint forward equals L_ground from a forward on the labeled images alone
    before.train(True)
    # (outputs are decollated: one dict per labeled image, without the batch dimension)
    separate = before.ground(out["image"][None], ["left lung"])  # _data's first labeled text
    expected = SegmentationLoss()(separate.text_logits, out["label"][None])
    assert float(out["loss_ground"]) == pytest.approx(expected.item(), rel=1e-4)


def test_ignore_uncertain_pixels_keeps_only_confident_pseudo_labels():
    """Confidence masking: pixels with a pseudo-label probability in [1 - p, p] do not reach the student."""
    recording = RecordingLoss()
    trainer = _make("mean_teacher", pseudo_label_threshold=0.9, ignore_uncertain_pixels=True, consistency_loss_function=recording)
    student = torch.zeros(1, 1, 1, 4, requires_grad=True)
    probs = torch.tensor([0.05, 0.5, 0.89, 0.95]).view(1, 1, 1, 4)
    trainer._consistency(student, probs).backward()
    target, mask = recording.calls[-1]
    assert torch.equal(mask.flatten(), torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.equal(target.flatten(), torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert student.grad.flatten()[1:3].abs().sum() == 0 and student.grad.flatten()[[0, 3]].abs().sum() > 0
    # without it every pixel counts, the uncertain ones as background
    plain = _make("mean_teacher", pseudo_label_threshold=0.9)
    s2 = torch.zeros(1, 1, 1, 4, requires_grad=True)
    plain._consistency(s2, probs).backward()
    assert s2.grad.flatten()[1].abs() > 0


def test_ignore_uncertain_pixels_needs_a_threshold_and_a_maskable_loss():
    with pytest.raises(ConfigError, match="pseudo_label_threshold"):
        _make("mean_teacher", ignore_uncertain_pixels=True)
    with pytest.raises(ConfigError, match="pseudo_label_threshold"):
        _make("mean_teacher", ignore_uncertain_pixels=True, pseudo_label_threshold=0.4)
    with pytest.raises(ConfigError, match="mask"):
        _make("mean_teacher", ignore_uncertain_pixels=True, pseudo_label_threshold=0.9,
              consistency_loss_function=lambda logits, target: (logits - target).abs().mean())
    trainer = _first_step(_make("dussss", ignore_uncertain_pixels=True, pseudo_label_threshold=0.9, grounding_supervision_weight=1.0))
    assert math.isfinite(float(trainer.state.output[0]["loss"]))


def test_patch_batches_are_grounded_on_the_whole_image_and_cropped_to_the_patch():
    """With a grounding context (patch training) f_g sees the whole images (``vlm_image``), the text mask of
    each patch is the crop of the whole image's mask, and f_g's supervision uses the whole masks."""
    whole, patch = 32, 16

    def items(n, labeled, seed):
        g = torch.Generator().manual_seed(seed)
        out = []
        for i in range(n):
            img = torch.rand(1, whole, whole, generator=g)
            top, left = 8 * (i % 2), 4 * (i % 3)
            it = {"image": img[:, top : top + patch, left : left + patch], "text": TEXTS[i % len(TEXTS)],
                  "vlm_image": img, "crop_box": torch.tensor([top / whole, left / whole, patch / whole, patch / whole])}
            if labeled:
                it["label"] = (it["image"] > 0.6).float()
                it["vlm_label"] = (img > 0.6).float()
            out.append(it)
        return out

    trainer = _make("dussss", grounding_supervision_weight=1.0, unlabeled_loader=DataLoader(items(4, False, 1), batch_size=2))
    trainer.data_loader = DataLoader(items(2, True, 0), batch_size=1)
    refiner = trainer.refiner
    grounded, merged = [], []
    original_ground, original_merge = refiner.ground, refiner.merge

    def ground(images, texts):
        result = original_ground(images, texts)
        grounded.append((images.shape, result.feature_logits.detach().clone()))
        return result

    refiner.ground = ground
    refiner.merge = lambda teacher, text: merged.append((teacher.shape, text)) or original_merge(teacher, text)
    _first_step(trainer)
    # one fused forward: 2 unlabeled + 1 labeled WHOLE images
    assert [shape for shape, _ in grounded] == [torch.Size([3, 1, whole, whole])]
    assert merged[0][0] == merged[0][1].shape == torch.Size([2, 1, patch, patch])
    # the patch's text logits are the crop of the whole image's
    expected = refiner.crop_to_boxes(grounded[0][1][:2], trainer.state.unlabeled_batch["crop_box"], (patch, patch))
    torch.testing.assert_close(merged[0][1], expected, rtol=1e-4, atol=1e-5)
    assert "loss_ground" in trainer.state.output[0]


@pytest.mark.parametrize("method, names", [("mean_teacher", ["teacher"]), ("dussss", ["merged", "text"])])
def test_output_reports_the_foreground_share_of_each_consistency_target(method, names):
    recording = RecordingLoss()
    trainer = _first_step(_make(method, pseudo_label_threshold=0.6, consistency_loss_function=recording))
    out = trainer.state.output[0]
    for name, target in zip(names, recording.targets):
        assert float(out[f"fg_fraction_{name}"]) == pytest.approx(float(target.mean()))
    assert not any(k.startswith("fg_fraction_") for k in _first_step(_make("supervised")).state.output[0])
