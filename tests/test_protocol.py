"""The verification protocol against hand computations."""

import numpy as np
import pytest

from facefoundry.evaluation.binset import bin_folds, read_bin, write_bin
from facefoundry.evaluation.protocol import (
    equal_error_rate,
    read_pairs,
    roc_auc,
    roc_curve,
    tar_at_far,
    ten_fold_accuracy,
    verification_metrics,
)


def test_ten_fold_accuracy_matches_a_hand_computation():
    # 10 folds x (2 genuine + 2 impostor). Genuine cos 0.9 and 0.6; impostors 0.1 and 0.7,
    # except fold 0 whose impostor at 0.7 is replaced by 0.5.
    scores, same, folds = [], [], []
    for fold in range(10):
        impostors = [0.1, 0.5] if fold == 0 else [0.1, 0.7]
        for s, label in zip([0.9, 0.6, *impostors], [True, True, False, False], strict=True):
            scores.append(s)
            same.append(label)
            folds.append(fold)
    mean, std, per_fold = ten_fold_accuracy(np.array(scores), np.array(same), np.array(folds))
    # In distance d = 2 - 2cos: genuine 0.2, 0.8; impostors 1.8 and 0.6 (fold 0: 1.0).
    # Held out fold 0: the first best threshold on folds 1-9 accepts only d=0.2 (3/4 right).
    # Held out fold k > 0: a threshold in (0.8, 1.0] wins on the training folds (28/36),
    # and on fold k it accepts 0.2, 0.6, 0.8: 3 of 4 right again.
    assert per_fold == pytest.approx([0.75] * 10)
    assert mean == pytest.approx(0.75) and std == pytest.approx(0.0)


def test_auc_eer_and_tar_on_hand_made_scores():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    same = np.array([1, 1, 1, 0, 1, 0, 0, 0], bool)
    # pairs (g, i): 16; g > i in all but (0.4 vs 0.6): AUC = 15/16
    assert roc_auc(scores, same) == pytest.approx(15 / 16)
    eer, _ = equal_error_rate(scores, same)
    assert eer == pytest.approx(0.25)
    tar, threshold = tar_at_far(scores, same, far=0.0)
    assert threshold == pytest.approx(0.6) and tar == pytest.approx(0.75)
    perfect = np.array([0.9, 0.8, 0.1, 0.2])
    assert equal_error_rate(perfect, np.array([1, 1, 0, 0], bool))[0] == pytest.approx(0.0)


def test_auc_counts_pairs_with_ties_as_half_on_random_scores():
    rng = np.random.default_rng(3)
    same = rng.random(500) < 0.5
    scores = np.round(rng.normal(same * 0.8, 1.0), 1)  # rounding creates many ties
    genuine, impostor = scores[same][:, None], scores[~same][None, :]
    by_pairs = np.mean((genuine > impostor) + 0.5 * (genuine == impostor))
    assert roc_auc(scores, same) == pytest.approx(by_pairs, abs=1e-12)


# genuine 0.9, 0.7, 0.7, 0.4; impostor 0.7, 0.7, 0.2, 0.2: ties across and within classes
TIED = np.array([0.9, 0.7, 0.7, 0.4, 0.7, 0.7, 0.2, 0.2])
TIED_SAME = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)


def test_roc_figures_by_hand_with_ties():
    # accepting scores >= 0.9, 0.7, 0.4, 0.2: FAR 0, 1/2, 1/2, 1; TAR 1/4, 3/4, 1, 1
    far, tar, thresholds = roc_curve(TIED, TIED_SAME)
    assert far.tolist() == [0.0, 0.5, 0.5, 1.0] and tar.tolist() == [0.25, 0.75, 1.0, 1.0]
    assert thresholds.tolist() == [0.9, 0.7, 0.4, 0.2]
    # 16 (genuine, impostor) pairs: 0.9 beats 4, each 0.7 beats 2 and ties 2, 0.4 beats 2
    assert roc_auc(TIED, TIED_SAME) == pytest.approx(12 / 16)
    # FAR - FRR: -3/4 at >= 0.9, +1/4 at >= 0.7; crossing 3/4 of the way: EER 3/8, t 0.75
    eer, threshold = equal_error_rate(TIED, TIED_SAME)
    assert eer == pytest.approx(0.375) and threshold == pytest.approx(0.75)
    # TAR@FAR accepts scores > t; the tied impostors at 0.7 go in or out together
    assert tar_at_far(TIED, TIED_SAME, far=0.25) == pytest.approx((0.25, 0.7))
    assert tar_at_far(TIED, TIED_SAME, far=0.0) == pytest.approx((0.25, 0.7))
    assert tar_at_far(TIED, TIED_SAME, far=0.5) == pytest.approx((1.0, 0.2))
    assert tar_at_far(TIED, TIED_SAME, far=1.0) == (1.0, float("-inf"))


def test_eer_when_an_impostor_ties_the_top_genuine_scores():
    # genuine 1.0, 1.0; impostor 1.0, 0.3, 0.2, 0.1. From "accept none" (FAR 0, FRR 1) to
    # ">= 1.0" (FAR 1/4, FRR 0) the rates meet at 1/(4 + 1) = 0.2
    scores = np.array([1.0, 1.0, 1.0, 0.3, 0.2, 0.1])
    same = np.array([1, 1, 0, 0, 0, 0], bool)
    eer, threshold = equal_error_rate(scores, same)
    assert eer == pytest.approx(0.2) and threshold == pytest.approx(1.0)


def test_one_class_gives_nan_figures():
    scores, same = np.array([0.3, 0.9]), np.array([True, True])
    assert np.isnan(roc_auc(scores, same)) and np.isnan(equal_error_rate(scores, same)[0])
    assert np.isnan(tar_at_far(scores, same)[0]) and len(roc_curve(scores, same)[0]) == 0


def test_pairs_files_parse_with_folds(tmp_path):
    view2 = tmp_path / "pairs.txt"
    lines = [
        "2\t2",
        "A\t1\t2",
        "B\t1\t3",
        "A\t1\tC\t2",
        "B\t2\tD\t1",
        "E\t1\t2",
        "F\t3\t4",
        "E\t1\tF\t1",
        "G\t1\tH\t1",
    ]
    view2.write_text("\n".join(lines) + "\n")
    pairs = read_pairs(view2)
    assert len(pairs) == 8 and [p.fold for p in pairs] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert pairs[0].left == "A/A_0001.jpg" and pairs[0].right == "A/A_0002.jpg" and pairs[0].same
    assert pairs[2].right == "C/C_0002.jpg" and not pairs[2].same
    broken = tmp_path / "broken.txt"
    broken.write_text("1\t1\nA\t1\n")
    with pytest.raises(ValueError, match="expected 2 pairs"):
        read_pairs(broken)


def test_bin_round_trip_and_scoring(tmp_path):
    import cv2

    from facefoundry.evaluation.verify import evaluate_bin

    rng = np.random.default_rng(5)
    encoded, issame = [], []
    for index in range(20):
        base = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        other = base if index % 2 == 0 else rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        for image in (base, other):
            encoded.append(cv2.imencode(".png", image)[1].tobytes())
        issame.append(index % 2 == 0)
    path = write_bin(tmp_path / "toy.bin", encoded, issame)
    images, labels = read_bin(path)
    assert len(images) == 40 and labels.tolist() == issame
    assert images[0].shape == (112, 112, 3)
    figures = evaluate_bin(path, "sface", flip_tta=False)
    # identical images score cos 1.0, distinct noise images less: perfect separation
    assert figures["accuracy"] == pytest.approx(1.0) and figures["pairs"] == 20
    assert bin_folds(20).tolist() == [i // 2 for i in range(20)]


def test_metrics_dictionary_is_complete():
    rng = np.random.default_rng(0)
    same = np.repeat([True, False], 300)
    scores = np.where(same, rng.normal(0.7, 0.1, 600), rng.normal(0.1, 0.1, 600))
    figures = verification_metrics(scores, same, np.tile(np.arange(10), 60))
    assert figures["accuracy"] > 0.99 and figures["auc"] > 0.999
    assert figures["eer"] < 0.01 and figures["tar_at_far_1e-3"] > 0.9
