"""The equal-scale comparison's pieces: the real-set matcher and the verdict."""

from facefoundry.evaluation.compare_real import choose_real_people, verdict
from facefoundry.evaluation.lfw_shards import match_people

PEOPLE = [("A", 1), ("B", 12), ("C", 3), ("D", 8), ("E", 2), ("F", 1), ("G", 30)]


def test_matcher_gives_one_person_per_identity_with_its_image_count():
    matched = match_people(PEOPLE, [8, 8, 3, 2])
    assert matched == [("G", 8), ("B", 8), ("D", 3), ("C", 2)]
    assert len(matched) == 4 and sum(c for _, c in matched) == 21


def test_matcher_takes_what_a_person_has_and_never_a_one_photo_person():
    matched = match_people(PEOPLE, [40, 9, 9, 9, 9, 9])
    assert matched == [("G", 30), ("B", 9), ("D", 8), ("C", 3), ("E", 2)]
    assert all(name not in ("A", "F") for name, _ in matched)


def test_auto_picks_the_real_set_closest_in_size():
    small, rule = choose_real_people(PEOPLE, [4, 4])
    assert rule == "matched" and sum(c for _, c in small) == 8
    everyone, rule = choose_real_people(PEOPLE, [9] * 7)  # 63 images: DevTrain-like whole
    assert rule == "devtrain" and everyone == PEOPLE


def test_verdict_says_which_side_of_the_target():
    assert "as well as real" in verdict(0.80, 0.78)
    assert "nearly replaces" in verdict(0.76, 0.80)
    assert "does not yet replace" in verdict(0.60, 0.80)
    assert "No comparison" in verdict(None, 0.8)
