"""A stage's code digest follows the code it runs and ignores docstrings and comments."""

import shutil

import pytest

from facefoundry.flows.code_digest import code_digest, package_roots, reachable_modules
from facefoundry.flows.config import load_recipe
from facefoundry.flows.stage_table import BY_NAME

GENERATE = "facefoundry.generators.idiff_face.generate"


@pytest.fixture()
def tree(tmp_path):
    """A copy of every facefoundry package folder, to edit without touching the checkout."""
    roots = {}
    for name, folder in package_roots().items():
        roots[name] = tmp_path / (name or "_namespace")
        shutil.copytree(folder, roots[name], ignore=shutil.ignore_patterns("__pycache__"))
    return roots


def edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_generate_runs_the_shard_writer_but_not_the_trainer_or_report(tree):
    modules = reachable_modules([GENERATE], tree)
    assert "facefoundry.shards.tarformat" in modules  # chunks are written with it
    assert "facefoundry.generators.idiff_face.pipeline" in modules
    assert "facefoundry.recognition.train" not in modules
    assert "facefoundry.flows.report" not in modules


def test_docstring_and_comment_edits_in_shards_keep_generate_current(tree):
    before = code_digest([GENERATE], tree)
    path = tree["shards"] / "tarformat.py"
    edit(path, '"""', '"""Edited module docstring.\n\n')
    path.write_text(path.read_text() + "\n# a trailing comment\n")
    assert code_digest([GENERATE], tree) == before


def test_a_code_edit_in_what_generate_imports_invalidates_it(tree):
    before = code_digest([GENERATE], tree)
    path = tree["shards"] / "tarformat.py"
    path.write_text(path.read_text() + "\nBLOCK = 512 * 2\n")
    assert code_digest([GENERATE], tree) != before


def test_editing_the_sampling_code_invalidates_generate_only(tree):
    generate, train = (
        code_digest([GENERATE], tree),
        code_digest(["facefoundry.recognition.train"], tree),
    )
    path = tree["generators"] / "idiff_face" / "pipeline.py"
    path.write_text(path.read_text() + "\nEXTRA_STEP = 1\n")
    assert code_digest([GENERATE], tree) != generate
    assert code_digest(["facefoundry.recognition.train"], tree) == train


def test_the_namespace_own_modules_count_too(tree):
    modules = reachable_modules(["facefoundry.recognition.train"], tree)
    assert "facefoundry.checkpoints" in modules
    before = code_digest(["facefoundry.recognition.train"], tree)
    path = tree[""] / "checkpoints.py"
    path.write_text(path.read_text() + "\nSPARE = 0\n")
    assert code_digest(["facefoundry.recognition.train"], tree) != before


def test_the_stage_table_names_real_entry_modules_for_every_stage():
    recipe = load_recipe(None)
    for stage in BY_NAME.values():
        modules = reachable_modules(stage.code(recipe))
        assert modules, stage.name
