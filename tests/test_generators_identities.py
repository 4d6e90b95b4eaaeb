from pathlib import Path

import numpy as np
import pytest

from facefoundry.generators.identities import (
    IdentityTable,
    draw_identities,
    make_identities,
    sample_separated,
)
from facefoundry.generators.seeds import sample_seed


def test_separated_identities_respect_the_bound():
    vectors = sample_separated(300, 64, seed=0, tau=0.3, block=128)
    assert vectors.shape == (300, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1)
    assert sims.max() <= 0.3 + 1e-6


def test_impossible_separation_is_a_clear_error():
    with pytest.raises(RuntimeError, match="lower n or raise tau"):
        sample_separated(200, 2, seed=0, tau=0.0, block=64, max_draws=2000)


def test_identity_table_round_trip_and_determinism(tmp_path):
    table = make_identities(20, 8, seed=3, method="uniform", embedder="sface")
    again = make_identities(20, 8, seed=3, method="uniform")
    assert np.array_equal(table.embeddings, again.embeddings)
    path = table.save(tmp_path / "identities.parquet")
    loaded = IdentityTable.load(path)
    assert np.array_equal(loaded.embeddings, table.embeddings)
    assert loaded.method == "uniform" and loaded.embedder == "sface"
    assert loaded.ids.tolist() == list(range(20))
    with pytest.raises(ValueError, match="unknown identity method"):
        make_identities(2, 8, 0, method="gaussian")


def test_two_stage_uses_embeddings_of_unconditional_samples():
    def generate(n, seed):
        return np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)

    def embed(faces):
        flat = faces.reshape(len(faces), -1)[:, :6].astype(np.float32) + 1
        flat[faces[:, 0, 0, 0] % 3 == 0] = np.nan  # some faces fail to embed and are redrawn
        return flat

    table = make_identities(
        5, 6, seed=1, method="two_stage", generate_unconditional=generate, embed=embed
    )
    assert table.embeddings.shape == (5, 6) and np.all(np.isfinite(table.embeddings))


def test_sample_seeds_depend_only_on_recipe_identity_and_index():
    assert sample_seed(0, 5, 2) == sample_seed(0, 5, 2)
    assert len({sample_seed(0, i, j) for i in range(50) for j in range(20)}) == 1000
    assert sample_seed(0, 5, 2, "context") != sample_seed(0, 5, 2)


def test_fitted_identities_follow_the_prior_and_the_separation_bound(tmp_path):
    from facefoundry.generators.identities import PRIOR_FILE, make_identities, save_identity_prior

    rng = np.random.default_rng(0)
    direction = np.zeros(16, np.float32)
    direction[0] = 1.0
    # "real" embeddings crowd around one direction, as a recognizer's embeddings do
    real = direction + 0.3 * rng.standard_normal((500, 16)).astype(np.float32)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    prior = save_identity_prior(real, tmp_path / PRIOR_FILE)
    fitted = make_identities(40, 16, seed=3, method="fitted", tau=0.9, prior=prior)
    uniform = make_identities(40, 16, seed=3, method="uniform")
    assert np.allclose(np.linalg.norm(fitted.embeddings, axis=1), 1.0, atol=1e-5)
    assert fitted.embeddings[:, 0].mean() > 0.5 > abs(uniform.embeddings[:, 0].mean())
    sims = fitted.embeddings @ fitted.embeddings.T
    assert sims[~np.eye(40, dtype=bool)].max() <= 0.9 + 1e-6
    again = make_identities(40, 16, seed=3, method="fitted", tau=0.9, prior=prior)
    assert np.array_equal(again.embeddings, fitted.embeddings)
    with pytest.raises(FileNotFoundError, match="identity prior"):
        make_identities(4, 16, seed=0, method="fitted", prior=tmp_path / "missing.safetensors")
    # a wider spread moves the draws off the shared mean direction, and further apart
    wide = make_identities(40, 16, seed=3, method="fitted", tau=0.9, prior=prior, spread=2.0)
    assert wide.embeddings[:, 0].mean() < fitted.embeddings[:, 0].mean()
    wide_sims = wide.embeddings @ wide.embeddings.T
    off = ~np.eye(40, dtype=bool)
    assert wide_sims[off].mean() < sims[off].mean()
    with pytest.raises(ValueError, match="spread"):
        make_identities(4, 16, seed=0, method="fitted", prior=prior, spread=0.0)


RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_can_draw_their_identity_pool(path):
    """Every shipped recipe's identity draw (probe pool included) is feasible: a pool
    larger than the prior holds at the recipe's tau otherwise fails only when someone
    runs the recipe (cpu-10k asked 3,600 fitted identities; the prior holds ~2,050)."""
    from facefoundry.flows.config import load_recipe
    from facefoundry.generators.families import family_of
    from facefoundry.generators.probe import candidate_pool

    recipe = load_recipe(path)
    model = getattr(recipe.generate, "model", None)
    if model and not (Path(__file__).resolve().parents[1] / model).exists():
        pytest.skip(f"{model} is not shipped (a user's own model)")
    space = family_of(recipe.generate).load().identity_space(recipe.generate)
    settings = recipe.identities
    pool = candidate_pool(settings)
    table = draw_identities(settings, recipe.seed, space, pool)
    assert len(table.ids) == pool
    if settings.method in ("separated", "fitted"):
        sims = table.embeddings @ table.embeddings.T
        np.fill_diagonal(sims, -1)
        assert sims.max() <= settings.tau + 1e-5
