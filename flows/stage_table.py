"""The stage table: what each stage of a build is, in one place.

| stage      | reads (upstream) | recipe section it depends on        | body (its package)               |
|------------|------------------|-------------------------------------|----------------------------------|
| identities | -                | identities, seed, the family's model| generators.identities (.probe)   |
| generate   | identities       | generate (not batching), seed       | the family's module (chunked)    |
| embed      | generate         | faces, every embedder the filter uses| faces.embed_stage (chunked)     |
| filter     | embed            | filter                              | filters.stage                    |
| shards     | filter           | shards                              | shards.stage                     |
| train      | shards           | train (not loader threads)          | recognition.train                |
| evaluate   | train            | evaluation                          | evaluation.verify                |
| compare    | evaluate         | compare (+ train, evaluation)       | evaluation.compare_real (opt.)   |

A stage's inputs hash is its section + the digest of the code it runs (the entry
modules below and every project module they import, docstrings and comments aside;
``flows/code_digest.py``) + the hashes of its upstream stages. The functions here are
thin: they turn run-folder paths and recipe sections into calls of the stage packages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from facefoundry.flows.config import Recipe
from facefoundry.flows.run_dir import RunDir
from facefoundry.generators.families import family_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One stage: a body (simple) or a plan + unit (chunked, mapped over workers)."""

    name: str
    upstream: tuple[str, ...]
    section: Callable[[Recipe], dict]
    code: Callable[[Recipe], tuple[str, ...]]
    body: Callable[[RunDir, Recipe], dict] | None = None
    plan: Callable[[RunDir, Recipe], list[tuple]] | None = None
    unit: Callable[..., object] | None = None
    unit_name: str = "units"  # how its marker counts them

    @property
    def chunked(self) -> bool:
        return self.plan is not None


def embedders_for(recipe: Recipe) -> list[str]:
    """Every embedder the filter stage reads: filter, privacy and judge models."""
    names = [recipe.filter.embedder, recipe.filter.judge_embedder]
    if recipe.filter.privacy_embedder:
        names.append(recipe.filter.privacy_embedder)
    return list(dict.fromkeys(names))


def _dump(recipe: Recipe, section: str) -> dict:
    return recipe.model_dump(mode="json")[section]


# --- identities -----------------------------------------------------------------------------
def identities_section(recipe: Recipe) -> dict:
    identities = _dump(recipe, "identities")
    if identities.get("spread") == 1.0:  # the default: runs made before it existed stay valid
        del identities["spread"]
    if identities.get("select") == "drawn":  # likewise
        del identities["select"], identities["pool"]
    section = {
        "identities": identities,
        "seed": recipe.seed,
        "family": recipe.generate.family,
        "model": recipe.generate.model,
    }
    if recipe.identities.select == "predicted":  # the selection reads the realisation map
        section["realisation_map"] = _realisation_checksum(recipe)
    if recipe.identities.probe is not None:  # probes are drawn and judged like samples
        section["probe_with"] = {
            "generate": generate_section(recipe)["generate"],
            "filter": {
                key: _dump(recipe, "filter")[key]
                for key in ("embedder", "tau_inter", "min_det_score", "max_faces", "calibration")
            },
            "faces": {
                key: _dump(recipe, "faces")[key] for key in ("detector", "selection", "no_face")
            },
        }
    return section


def _realisation_checksum(recipe: Recipe) -> str | None:
    import hashlib

    space = family_of(recipe.generate).load().identity_space(recipe.generate)
    path = space.realisation
    if path is None or not path.is_file():
        return None  # the stage then fails with how to fit one
    return hashlib.sha256(path.read_bytes()).hexdigest()


def identities_code(recipe: Recipe) -> tuple[str, ...]:
    modules = ("facefoundry.generators.identities", family_of(recipe.generate).module)
    if recipe.identities.probe is not None:
        modules += ("facefoundry.generators.probe",)
    return modules


def identities_body(run: RunDir, recipe: Recipe) -> dict:
    from facefoundry.generators.identities import write_identities

    space = family_of(recipe.generate).load().identity_space(recipe.generate)
    if recipe.identities.probe is not None:
        from facefoundry.generators.probe import realise_identities

        funnel = realise_identities(run.identities.parent, recipe, space)
        return {"identities": funnel["realised"], "probe_funnel": funnel}
    count = write_identities(run.identities, recipe.identities, recipe.seed, space)
    return {"identities": count}


# --- generate (chunked) -----------------------------------------------------------------------
def generate_section(recipe: Recipe) -> dict:
    scheduling = recipe.generate.SCHEDULING_FIELDS
    settings = {k: v for k, v in _dump(recipe, "generate").items() if k not in scheduling}
    return {"generate": settings, "seed": recipe.seed}


def generate_plan(run: RunDir, recipe: Recipe) -> list[tuple]:
    from facefoundry.generators.identities import IdentityTable

    ids = [int(i) for i in IdentityTable.load(run.identities).ids]
    chunks = family_of(recipe.generate).plan(ids, recipe.generate)
    return [(part, chunk) for part, chunk in enumerate(chunks)]


def generate_unit(run: RunDir, part: int, identity_ids: list[int]) -> str:
    """One chunk of the recipe's generator family (the same contract for every family)."""
    recipe = load_run_recipe(run)
    module = family_of(recipe.generate).load()
    probe = recipe.identities.probe
    reuse = {}  # probes conditioned on the requested vector are these identities' samples
    if probe is not None and probe.condition == "original" and getattr(module, "REUSES_DRAWN", 0):
        reuse["drawn"] = run.probes
    path = module.generate_chunk(
        run.identities,
        identity_ids,
        run.generate,
        part,
        recipe.generate,
        recipe.seed,
        cache_dir=run.cache,
        **reuse,
    )
    return str(path)


# --- embed (chunked) ------------------------------------------------------------------------
def embed_section(recipe: Recipe) -> dict:
    speed_only = ("batch_size", "workers")
    return {
        "faces": {k: v for k, v in _dump(recipe, "faces").items() if k not in speed_only},
        "embedders": embedders_for(recipe),
    }


def embed_plan(run: RunDir, recipe: Recipe) -> list[tuple]:
    return [(str(path),) for path in run.generate_tars()]


def embed_unit(run: RunDir, tar_path: str) -> dict:
    from facefoundry.faces.embed_stage import Partition, embed_partition, is_done
    from facefoundry.faces.settings import embed_workers

    recipe = load_run_recipe(run)
    embedders = embedders_for(recipe)
    out = run.embed_part(tar_path)
    if is_done(out, recipe.faces.detector, embedders):
        return {"path": str(out), "skipped": True}
    partition = Partition(name=Path(tar_path).stem, source=tar_path)
    return embed_partition(
        partition,
        str(out),
        recipe.faces.detector,
        embedders,
        {
            "policy": recipe.faces.selection,
            "no_face": recipe.faces.no_face,
            "batch_size": recipe.faces.batch_size,
        },
        workers=embed_workers(
            recipe.faces, recipe.orchestration.runner, recipe.orchestration.max_workers
        ),
    )


# --- filter ---------------------------------------------------------------------------------
def filter_body(run: RunDir, recipe: Recipe) -> dict:
    from facefoundry.filters.stage import run_filter

    run_filter(
        run.embed,
        run.filter,
        recipe.filter,
        generate_dir=run.generate,
        generator_model=recipe.generate.model,  # its recorded training people: privacy
        lfw=recipe.evaluation.lfw,
    )
    metrics = json.loads(run.filter_metrics.read_text())
    return {"funnel": metrics.get("funnel")}


# --- shards ---------------------------------------------------------------------------------
def shards_body(run: RunDir, recipe: Recipe) -> dict:
    from facefoundry.flows.stages import stage_hash
    from facefoundry.shards.stage import write_shard_stage

    metrics = json.loads(run.filter_metrics.read_text())
    return write_shard_stage(
        run.generate_parts(),
        run.filter_decisions,
        run.shards,
        recipe.shards,
        recipe_hash=stage_hash(run, "shards", recipe),
        quality={"filter": metrics.get("metrics", {}).get("after")},
    )


# --- train ----------------------------------------------------------------------------------
def train_section(recipe: Recipe) -> dict:
    return {
        k: v for k, v in _dump(recipe, "train").items() if k not in ("loader_workers", "threads")
    }


def train_body(run: RunDir, recipe: Recipe) -> dict:
    from facefoundry.recognition.train import train_recognizer

    shards = json.loads(run.marker("shards").read_text())
    if int(shards.get("classes") or 0) < 2:
        message = (
            f"only {shards.get('classes') or 0} identities survived filtering: too few "
            "to train a recognizer (see the report's funnel)"
        )
        logger.warning(message)
        return {"skipped_reason": message}
    train_recognizer(run.shards, run.train, recipe.train, recipe.evaluation.lfw, progress=False)
    history = json.loads(run.train_history.read_text())
    return {"epochs": len(history), "last": history[-1] if history else None}


# --- evaluate -------------------------------------------------------------------------------
def evaluate_body(run: RunDir, recipe: Recipe) -> dict:
    from facefoundry.evaluation.verify import evaluate_stage

    if not run.model_onnx.is_file():
        trained = json.loads(run.marker("train").read_text())
        return {"skipped_reason": trained.get("skipped_reason", "no trained model")}
    return evaluate_stage(f"onnx:{run.model_onnx}", run.evaluate, recipe.evaluation)


# --- compare (optional) -----------------------------------------------------------------------
def compare_section(recipe: Recipe) -> dict:
    if recipe.compare is None:
        return {"compare": None}
    return {
        "compare": _dump(recipe, "compare"),
        **train_section(recipe),
        "eval": _dump(recipe, "evaluation"),
    }


def real_twin_digest(recipe: Recipe) -> str:
    """What decides the compare stage's real twin besides its people: the trainer and
    evaluation settings and the code that runs them (a cached twin is reused only when
    all match)."""
    import hashlib

    from facefoundry.flows.code_digest import code_digest

    payload = {
        "train": train_section(recipe),
        "evaluation": _dump(recipe, "evaluation"),
        "code": code_digest(("facefoundry.evaluation.compare_real",)),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def compare_body(run: RunDir, recipe: Recipe) -> dict:
    if recipe.compare is None:
        return {"skipped_reason": "no compare section in the recipe"}
    if not run.model_onnx.is_file():
        return {"skipped_reason": "no synthetic recognizer to compare"}
    from facefoundry.evaluation.compare_real import compare_with_real

    return compare_with_real(run, recipe, real_twin_digest(recipe))


def load_run_recipe(run: RunDir) -> Recipe:
    from facefoundry.flows.config import load_recipe

    return load_recipe(run.recipe)


def _modules(*names: str) -> Callable[[Recipe], tuple[str, ...]]:
    return lambda recipe: tuple(f"facefoundry.{name}" for name in names)


STAGES: tuple[Stage, ...] = (
    Stage(
        "identities",
        (),
        identities_section,
        identities_code,
        body=identities_body,
    ),
    Stage(
        "generate",
        ("identities",),
        generate_section,
        lambda r: (family_of(r.generate).module,),
        plan=generate_plan,
        unit=generate_unit,
        unit_name="chunks",
    ),
    Stage(
        "embed",
        ("generate",),
        embed_section,
        _modules("faces.embed_stage"),
        plan=embed_plan,
        unit=embed_unit,
        unit_name="parts",
    ),
    Stage(
        "filter", ("embed",), lambda r: _dump(r, "filter"), _modules("filters.stage"), filter_body
    ),
    Stage(
        "shards", ("filter",), lambda r: _dump(r, "shards"), _modules("shards.stage"), shards_body
    ),
    Stage("train", ("shards",), train_section, _modules("recognition.train"), train_body),
    Stage(
        "evaluate",
        ("train",),
        lambda r: _dump(r, "evaluation"),
        _modules("evaluation.verify"),
        evaluate_body,
    ),
    Stage(
        "compare",
        ("evaluate",),
        compare_section,
        _modules("evaluation.compare_real"),
        compare_body,
    ),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
