"""The text check's figures, verdict and refusals (its run on a trained bundle: ``test_bundle_smoke.py``)."""

from __future__ import annotations

import json

import pytest
import torch

from dussss_monai.bundle import text_check
from dussss_monai.errors import ConfigError
from dussss_monai.refiner import Refinement


def _masks(truth, teacher, text, merged, rotated):
    as_mask = [torch.tensor(m, dtype=torch.bool).reshape(1, 1, -1) for m in (truth, teacher, text, merged, rotated)]
    return text_check.PseudoLabelMasks(*as_mask)


def test_summary_pools_dice_over_pixels_and_counts_changed_pixels():
    truth = [1, 1, 0, 0]
    masks = [
        _masks(truth, [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0]),
        _masks([0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]),
    ]
    check = text_check.summarise(masks)
    # teacher: TP 1, P 2, G 2 -> 50; text: TP 2, P 4 -> 66.7; merged: perfect; rotated: TP 1, P 3 -> 40
    assert check.dice == pytest.approx({"teacher": 50.0, "text": 200 * 2 / 6, "merged": 100.0, "merged_rotated": 40.0})
    assert check.changed_pct == pytest.approx(100 * 2 / 8) and check.n_samples == 2
    assert check.helps and "DuSSS suits this data" in check.report()


@pytest.mark.parametrize(
    "dice",
    [
        {"teacher": 80.0, "text": 50.0, "merged": 80.4, "merged_rotated": 70.0},  # no gain over the teacher
        {"teacher": 70.0, "text": 50.0, "merged": 80.0, "merged_rotated": 79.8},  # any sentence does as well
    ],
)
def test_verdict_needs_a_gain_over_the_teacher_and_over_other_sentences(dice):
    check = text_check.TextCheck(dice, 1.0, 10)
    assert not check.helps
    assert check.report().splitlines()[-1].endswith("train the mean teacher (configs/mean_teacher.json).")


def test_refuses_a_folder_without_a_run_record_and_a_run_without_text(tmp_path, capsys):
    assert text_check.main(["--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("text_check: ") and "run.json" in err and "output_dir of a stage-2 DuSSS run" in err

    (tmp_path / "run.json").write_text(json.dumps({"method": "mean_teacher", "config": {"method": "mean_teacher"}}))
    with pytest.raises(ConfigError, match="'mean_teacher' run: the text check needs a DuSSS run"):
        text_check.load_run(tmp_path)


def test_targets_of_each_sample_and_the_control_with_another_sentence():
    # 2x2 samples: the truth marks the left column; the teacher marks the top row; the text "left" marks the left
    # column, so merged is right and the rotated sentence "right" marks the right column.
    label = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    top_row = torch.tensor([[[4.0, 4.0], [-4.0, -4.0]]])
    column = {"left": torch.tensor([[[9.0, -9.0], [9.0, -9.0]]]), "right": torch.tensor([[[-9.0, 9.0], [-9.0, 9.0]]])}
    calls = []

    class Teacher(torch.nn.Module):
        def forward(self, x):
            return top_row.expand(x.shape[0], 1, 2, 2)

    def refiner(context, texts, teacher_logits, boxes):
        calls.append((tuple(context.shape), boxes is None))
        text = torch.stack([column[t] for t in texts])
        return Refinement(torch.sigmoid(teacher_logits + text), torch.sigmoid(text), None, list(texts))

    sample = {"image": torch.zeros(1, 2, 2), "label": label, "text": "left", "rotated_text": "right"}
    masks = text_check.pseudo_label_masks(Teacher(), refiner, [sample] * 3, batch_size=2)
    check = text_check.summarise(masks)
    assert check.dice == pytest.approx({"teacher": 50.0, "text": 100.0, "merged": 100.0, "merged_rotated": 0.0})
    assert check.changed_pct == pytest.approx(50.0) and check.n_samples == 3
    assert calls[:2] == [((2, 1, 2, 2), True)] * 2  # resized images: the images themselves are the context

    # patch training: the whole image is the context and the box says where the patch lies
    patch = {**sample, "vlm_image": torch.zeros(1, 4, 4), "crop_box": torch.tensor([0.0, 0.0, 0.5, 0.5])}
    calls.clear()
    text_check.pseudo_label_masks(Teacher(), refiner, [patch], batch_size=2)
    assert calls == [((1, 1, 4, 4), False)] * 2


class _Parser:
    """The few parsed settings :func:`text_check.check_samples` reads from a run's config."""

    def __init__(self, **content):
        self.content = content

    def get_parsed_content(self, key):
        return self.content[key]


def test_volumes_are_checked_on_slices_drawn_as_in_training(tmp_path):
    from volume_phantoms import write_pair

    items = []
    for i, text in enumerate(("Lesion in the left upper part.", "Lesion in the right lower part.")):
        image, mask = write_pair(tmp_path, f"case{i}", "ASR" if i else "LPS")
        items.append({"image": str(image), "label": str(mask), "text": text, "name": f"case{i}"})
    parser = _Parser(
        datalist={"validation": items},
        image_size=16,
        in_channels=1,
        patch_size=None,
        volumes=True,
        intensity_window=[0, 1000],
        slice_axis="axial",
    )
    samples = text_check.check_samples(parser, "validation", 3, 0)
    assert len(samples) == 6  # 3 slices of each volume
    for k, sample in enumerate(samples):
        assert tuple(sample["image"].shape) == tuple(sample["label"].shape) == (1, 16, 16)
        own, other = items[k // 3]["text"], items[1 - k // 3]["text"]
        assert (sample["text"], sample["rotated_text"]) == (own, other)
