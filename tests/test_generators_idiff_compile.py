"""generate.compile: the compiled UNet draws the eager UNet's images up to float rounding,
keeps CPU sampling batch-invariant, and a broken compiler falls back to eager sampling."""

import copy
import logging
from pathlib import Path

import numpy as np
import torch

from facefoundry.generators.idiff_face.generate import compile_and_warm_up
from facefoundry.generators.idiff_face.model import IDiffFaceModel
from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline
from facefoundry.generators.idiff_face.settings import IDiffFaceSettings
from tests.helpers.generators import tiny_config

SAMPLING = {"steps": 3, "guidance_scale": 2.0}


def _pipelines():
    torch.manual_seed(0)
    model = IDiffFaceModel(tiny_config())
    eager = IDiffFacePipeline(model, "dpmsolver++", device="cpu")
    other = IDiffFacePipeline(copy.deepcopy(model), "dpmsolver++", device="cpu")
    identities = np.random.default_rng(3).standard_normal((5, 12)).astype(np.float32)
    settings = IDiffFaceSettings(model="tiny", compile=True, **SAMPLING)
    return eager, other, identities, settings


def test_compiled_sampling_is_eager_sampling_up_to_rounding_and_batch_invariant():
    eager, compiled, identities, settings = _pipelines()
    seeds = [11, 12, 13, 14, 15]
    expected = eager(identities, seeds, **SAMPLING)
    assert compile_and_warm_up(compiled, settings)
    assert compiled.compiled and not eager.compiled
    images = compiled(identities, seeds, **SAMPLING)
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1
    alone = compiled(identities[3:4], seeds[3:4], **SAMPLING)
    assert np.array_equal(alone[0], images[3])  # same bytes at any batch position
    compiled.eager_unet()
    assert not compiled.compiled
    assert np.array_equal(compiled(identities, seeds, **SAMPLING), expected)


def test_a_compiler_that_fails_leaves_eager_sampling_and_says_so(caplog):
    eager, pipeline, identities, settings = _pipelines()
    patch = {"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}
    torch._dynamo.reset()
    with torch._inductor.config.patch(patch), caplog.at_level(logging.WARNING):
        assert not compile_and_warm_up(pipeline, settings)
    torch._dynamo.reset()
    assert not pipeline.compiled
    assert "torch.compile failed" in caplog.text
    seeds = [1, 2, 3, 4, 5]
    assert np.array_equal(
        pipeline(identities, seeds, **SAMPLING), eager(identities, seeds, **SAMPLING)
    )


def test_switching_compile_leaves_the_generate_and_identities_digests_unchanged():
    """Like ``device``, compile changes how images are drawn, not which: toggling it keeps
    every chunk already drawn; a sampling field (steps) does change the digest."""
    from facefoundry.flows.config import load_recipe
    from facefoundry.flows.stage_table import generate_section

    demo = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
    eager = generate_section(load_recipe(demo, ["generate.compile=false"]))
    compiled = generate_section(load_recipe(demo, ["generate.compile=true"]))
    assert compiled == eager
    assert generate_section(load_recipe(demo, ["generate.steps=9"])) != eager
    assert not IDiffFaceSettings(model="m").compile  # off unless a recipe asks
