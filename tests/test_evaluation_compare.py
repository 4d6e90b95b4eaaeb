"""The equal-scale comparison's pieces: the real-set matcher, the verdict and the key of a
cached real twin."""

from pathlib import Path

from facefoundry.evaluation.compare_real import choose_real_people, twin_key, verdict
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


def test_a_real_twin_is_reused_only_with_the_same_people_trainer_and_lfw(tmp_path):
    from facefoundry.flows.config import load_recipe
    from facefoundry.flows.stage_table import real_twin_digest
    from tests.helpers.flows import tiny_recipe

    recipe = load_recipe(tiny_recipe(tmp_path, "unused"))
    digest = real_twin_digest(recipe)
    people, lfw = [("B", 8), ("D", 3)], Path("/data/lfw")
    key = twin_key(people, digest, lfw)
    assert key == twin_key(list(people), real_twin_digest(recipe), lfw)
    # what the real side does not depend on: the synthetic side and the trainer's threads
    other_synthetic = recipe.model_copy(
        update={
            "name": "other",
            "seed": 9,
            "generate": recipe.generate.model_copy(update={"steps": 5}),
            "train": recipe.train.model_copy(update={"threads": 2, "loader_workers": 2}),
        }
    )
    assert real_twin_digest(other_synthetic) == digest
    # what it does depend on
    longer = recipe.model_copy(update={"train": recipe.train.model_copy(update={"epochs": 3})})
    folds = recipe.model_copy(
        update={"evaluation": recipe.evaluation.model_copy(update={"folds": [0, 1]})}
    )
    keys = {
        key,
        twin_key([("B", 8), ("D", 2)], digest, lfw),
        twin_key(people, real_twin_digest(longer), lfw),
        twin_key(people, real_twin_digest(folds), lfw),
        twin_key(people, digest, Path("/elsewhere/lfw")),
    }
    assert len(keys) == 5
