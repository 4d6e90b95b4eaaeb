import pytest

from facefoundry.flows.config import RecipeError, load_recipe


def test_misspelled_key_names_the_key_the_file_and_the_nearest_valid_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: demo\nfilter:\n  embeder: dlib\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    message = str(info.value)
    assert "filter.embeder" in message and str(recipe) in message
    assert "did you mean 'embedder'" in message


def test_a_family_key_is_checked_against_that_family(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("generate:\n  family: multi_id\n  guidance_scale: 3\n")
    with pytest.raises(RecipeError, match="'generate.guidance_scale' for family multi_id"):
        load_recipe(recipe)
    with pytest.raises(RecipeError, match="did you mean 'steps'"):
        load_recipe(None, ["generate.stepz=3"])  # no family: the default idiff_face


def test_unknown_top_level_section_is_rejected(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("fases: {}\n")
    with pytest.raises(RecipeError, match="did you mean 'faces'"):
        load_recipe(recipe)


def test_alternating_detail_guidance_without_both_guidances_is_a_recipe_error():
    alternate = ["generate.detail_alternate=true"]
    recipe = load_recipe(
        None, [*alternate, "generate.guidance_scale=3", "generate.detail_guidance=1"]
    )
    assert recipe.generate.detail_alternate
    late = load_recipe(
        None,
        [
            *alternate,
            "generate.guidance_scale=3",
            "generate.detail_guidance=1",
            "generate.guidance_interval=[0, 900]",
        ],
    )
    assert late.generate.guidance_interval == (0, 900)
    with pytest.raises(RecipeError, match="inverted"):
        load_recipe(None, ["generate.guidance_interval=[900, 0]"])
    for missing in (["generate.guidance_scale=3"], ["generate.detail_guidance=1"]):
        with pytest.raises(RecipeError, match="detail_alternate alternates"):
            load_recipe(None, [*alternate, *missing])


def test_set_overrides_are_typed_and_validated():
    recipe = load_recipe(None, ["filter.min_samples=3", "faces.batch_size=3", "seed=7"])
    assert recipe.filter.min_samples == 3 and recipe.faces.batch_size == 3 and recipe.seed == 7
    with pytest.raises(RecipeError, match="with --set overrides"):
        load_recipe(None, ["faces.batch_size=0"])
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(None, ["faces.batch_size"])


def test_section_hash_changes_only_with_its_section():
    a, b = load_recipe(None), load_recipe(None, ["evaluation.flip_tta=false"])
    assert a.section_hash("faces") == b.section_hash("faces")
    assert a.section_hash("evaluation") != b.section_hash("evaluation")


def test_shipped_recipes_validate():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
    assert recipes, "recipes/ should ship at least the demo recipe"
    for path in recipes:
        load_recipe(path)


def test_embed_workers_follow_the_runner_and_do_not_change_the_stage_inputs():
    """faces.workers is speed only: explicit wins; Dask workers are the processes (1);
    on the threads runner each chunk task gets its share of the cores."""
    import os

    from facefoundry.faces.settings import embed_workers
    from facefoundry.flows.stage_table import embed_section

    cores = len(os.sched_getaffinity(0))
    recipe = load_recipe(None, [])
    assert embed_workers(recipe.faces) == cores
    assert embed_workers(recipe.faces, "threads", max_workers=2) == max(1, cores // 2)
    assert embed_workers(recipe.faces, "dask") == 1
    three = load_recipe(None, ["faces.workers=3"])
    assert embed_workers(three.faces, "dask") == 3
    assert embed_section(three) == embed_section(recipe)
    with pytest.raises(RecipeError):
        load_recipe(None, ["faces.workers=0"])
