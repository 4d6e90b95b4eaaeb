"""The stages of a build as plain functions over a run directory (no Prefect here).

Each ``run_<stage>`` reads the resolved recipe and the previous stages' files under
``runs/<name>/`` and writes its own folder; chunked stages expose ``plan_*`` (the
units of work) and ``*_unit`` (one unit) so an orchestrator can map them over
workers. ``flows/flows.py`` wraps these in Prefect tasks; tests call them directly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from facefoundry.flows.config import Recipe, load_recipe
from facefoundry.flows.markers import inputs_hash, is_current, prepare_stage_dir, write_marker

logger = logging.getLogger(__name__)

STAGES = ("identities", "generate", "embed", "filter", "shards", "train", "evaluate")
UPSTREAM = {
    "identities": [],
    "generate": ["identities"],
    "embed": ["generate"],
    "filter": ["embed"],
    "shards": ["filter"],
    "train": ["shards"],
    "evaluate": ["train"],
}
RESOLVED = "recipe.resolved.yaml"
# the packages whose source decides each stage's output (like Prefect's TASK_SOURCE policy)
STAGE_CODE = {
    "identities": ("generators",),
    "generate": ("generators", "shards"),
    "embed": ("faces", "filters"),
    "filter": ("filters",),
    "shards": ("shards",),
    "train": ("evaluation", "shards"),
    "evaluate": ("evaluation", "faces"),
}


@dataclass(frozen=True)
class Run:
    """A run directory and its resolved recipe (what every task receives: a path)."""

    run_dir: Path

    @property
    def recipe(self) -> Recipe:
        return load_recipe(self.run_dir / RESOLVED)

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage


def start_run(recipe: Recipe, runs_root: str | Path = "runs") -> Run:
    """Create ``runs_root/<name>/`` and write the resolved recipe into it."""
    run_dir = Path(runs_root) / recipe.name
    run_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    path = run_dir / RESOLVED
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return Run(run_dir)


def section_for(recipe: Recipe, stage: str) -> dict:
    """The recipe fields a stage's output depends on."""
    dump = recipe.model_dump(mode="json")
    if stage == "identities":
        return {
            "identities": dump["identities"],
            "seed": recipe.seed,
            "model": dump["generate"]["model"],
        }
    if stage == "generate":
        keep = {
            k: v
            for k, v in dump["generate"].items()
            if k not in ("batch_size", "device", "chunk_identities")
        }
        return {"generate": keep, "seed": recipe.seed}
    if stage == "embed":
        return {
            "faces": {k: dump["faces"][k] for k in ("detector", "selection")},
            "embedders": embedders_for(recipe),
        }
    if stage == "filter":
        return dump["filter"]
    if stage == "shards":
        return dump["shards"]
    if stage == "train":
        return {k: v for k, v in dump["train"].items() if k not in ("loader_workers", "threads")}
    if stage == "evaluate":
        return dump["evaluation"]
    raise ValueError(f"unknown stage {stage!r}")


def code_digest(packages: tuple[str, ...]) -> str:
    """SHA-256 over the Python source of ``packages``: a code change re-runs the stage."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def stage_hash(run: Run, stage: str, recipe: Recipe | None = None) -> str:
    recipe = recipe or run.recipe
    upstream = []
    for name in UPSTREAM[stage]:
        marker = run.stage_dir(name) / "_SUCCESS.json"
        upstream.append(
            json.loads(marker.read_text())["inputs_hash"] if marker.is_file() else f"missing:{name}"
        )
    section = {"settings": section_for(recipe, stage), "code": code_digest(STAGE_CODE[stage])}
    return inputs_hash(section, upstream)


def embedders_for(recipe: Recipe) -> list[str]:
    """Every embedder the filter stage reads: filter, privacy and judge models."""
    names = [recipe.filter.embedder, recipe.filter.judge_embedder]
    if recipe.filter.privacy_embedder:
        names.append(recipe.filter.privacy_embedder)
    return list(dict.fromkeys(names))


def run_stage(run: Run, stage: str, body: Callable[[Path, Recipe], dict | None]) -> dict:
    """Skip a current stage; else (re)run ``body(stage_dir, recipe)`` and mark it done."""
    recipe = run.recipe
    expected = stage_hash(run, stage, recipe)
    stage_dir = run.stage_dir(stage)
    if is_current(stage_dir, expected):
        logger.info("%s is up to date (inputs %s): skipped", stage, expected)
        return {"stage": stage, "skipped": True, "inputs_hash": expected}
    prepare_stage_dir(stage_dir, expected)
    started = time.perf_counter()
    extra = body(stage_dir, recipe) or {}
    seconds = time.perf_counter() - started
    write_marker(stage_dir, expected, seconds, extra)
    return {"stage": stage, "skipped": False, "inputs_hash": expected, "seconds": seconds, **extra}


# --- identities -----------------------------------------------------------------------------
def identities_body(stage_dir: Path, recipe: Recipe) -> dict:
    from facefoundry.generators.identities import PRIOR_FILE, make_identities
    from facefoundry.generators.idiff_face.model import IDiffFaceModel  # noqa: F401 - clear error early

    config = model_config(recipe)
    settings = recipe.identities
    table = make_identities(
        settings.count,
        config.id_dim,
        recipe.seed,
        settings.method,
        settings.tau,
        embedder=config.conditioning_embedder,
        prior=Path(recipe.generate.model) / PRIOR_FILE,
    )
    table.save(stage_dir / "identities.parquet")
    return {"identities": len(table)}


def model_config(recipe: Recipe):
    from facefoundry.generators.idiff_face.config import IDiffFaceConfig
    from facefoundry.generators.idiff_face.model import CONFIG_NAME, ModelFolderError

    path = Path(recipe.generate.model) / CONFIG_NAME
    if not path.is_file():
        raise ModelFolderError(
            f"generator model {recipe.generate.model} not found (no {CONFIG_NAME}); set "
            "generate.model to an IDiff-Face model folder"
        )
    return IDiffFaceConfig.model_validate_json(path.read_text())


# --- generate (chunked) -------------------------------------------------------------------
def plan_generate(run: Run) -> list[list[int]]:
    """Identity ids per chunk (the unit of GPU work, retry and resume)."""
    from facefoundry.generators.identities import IdentityTable

    recipe = run.recipe
    ids = [
        int(i) for i in IdentityTable.load(run.stage_dir("identities") / "identities.parquet").ids
    ]
    size = recipe.generate.chunk_identities
    if recipe.generate.family == "multi_id":
        size = recipe.generate.multi_id.chunk_identities
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def identity_network(settings):
    """The recognizer behind ID-Booth's triplet loss (None: the term is off)."""
    if not settings.identity_model:
        logger.warning("id_booth.identity_model is empty: fine-tuning without the triplet loss")
        return None
    from facefoundry.evaluation.export import load_backbone

    return load_backbone(
        settings.identity_model, settings.identity_backbone, settings.identity_features
    )


def generate_unit(run: Run, part: int, identity_ids: list[int]) -> str:
    """One chunk of the recipe's generator family (the same stage contract for all)."""
    recipe = run.recipe
    family = recipe.generate.family
    if family == "id_booth":
        from facefoundry.generators.id_booth.generate import generate_chunk

        extra = (recipe.generate, recipe.seed, identity_network(recipe.generate.id_booth))
    elif family == "multi_id":
        from facefoundry.generators.with_anyone.generate import generate_chunk

        extra = (recipe.generate.multi_id, recipe.seed)
    else:
        from facefoundry.generators.idiff_face.generate import generate_chunk

        extra = (recipe.generate, recipe.seed)
    identities = run.stage_dir("identities") / "identities.parquet"
    return str(generate_chunk(identities, identity_ids, run.stage_dir("generate"), part, *extra))


# --- embed (chunked) ----------------------------------------------------------------------
def plan_embed(run: Run) -> list[str]:
    return [str(p) for p in sorted(run.stage_dir("generate").glob("part-*.tar"))]


def embed_unit(run: Run, tar_path: str) -> dict:
    from facefoundry.filters.distributed import Partition, embed_partition, is_done

    recipe = run.recipe
    embedders = embedders_for(recipe)
    out = run.stage_dir("embed") / (Path(tar_path).stem + ".parquet")
    if is_done(out, recipe.faces.detector, embedders):
        return {"path": str(out), "skipped": True}
    partition = Partition(name=Path(tar_path).stem, source=tar_path)
    return embed_partition(
        partition,
        str(out),
        recipe.faces.detector,
        embedders,
        {"policy": recipe.faces.selection, "no_face": "reject"},
    )


# --- filter -------------------------------------------------------------------------------
def filter_body(stage_dir: Path, recipe: Recipe, run_dir: Path) -> dict:
    from facefoundry.filters.stage import run_filter

    run_filter(run_dir / "embed", stage_dir, recipe.filter)
    metrics = json.loads((stage_dir / "metrics.json").read_text())
    return {"funnel": metrics.get("funnel")}


# --- shards -------------------------------------------------------------------------------
def shard_samples(run_dir: Path):
    """ShardSamples from the filter decisions + generated chunk files, sorted by key."""
    import pyarrow.parquet as pq

    from facefoundry.shards import ShardSample
    from facefoundry.shards.tarformat import iter_members

    decisions = {
        row["key"]: row
        for row in pq.read_table(run_dir / "filter" / "decisions.parquet").to_pylist()
    }
    samples = []
    for parquet in sorted((run_dir / "generate").glob("part-*.parquet")):
        provenance = {row["key"]: row for row in pq.read_table(parquet).to_pylist()}
        images: dict[str, bytes] = {}
        with open(parquet.with_suffix(".tar"), "rb") as handle:
            for member in iter_members(
                handle, source=str(parquet.with_suffix(".tar")), max_member_bytes=64 << 20
            ):
                stem, _, suffix = member.name.rpartition(".")
                if suffix == "jpg":
                    images[stem] = member.data
        for key, row in provenance.items():
            decision = decisions.get(key)
            kept = bool(decision and decision["kept"])
            reason = None if kept else (decision["reject_reason"] if decision else "not_embedded")
            samples.append(
                ShardSample(
                    key=key,
                    identity=int(row["identity"]),
                    kept=kept,
                    face_jpeg=images.get(key) if kept else None,
                    reject_reason=reason or ("rejected" if not kept else None),
                    generator=row["generator"],
                    seed=int(row["seed"]),
                    prompt=row.get("prompt"),
                    det_score=_maybe(decision, "det_score"),
                    centroid_cos=_maybe(decision, "centroid_cos"),
                    metadata={
                        "model_checksum": row["model_checksum"],
                        "scheduler": row["scheduler"],
                        "steps": row["steps"],
                    },
                )
            )
    return sorted(samples, key=lambda s: s.key)


def _maybe(row: dict | None, key: str) -> float | None:
    if not row or row.get(key) is None:
        return None
    value = float(row[key])
    return value if value == value else None  # NaN -> None


def shards_body(stage_dir: Path, recipe: Recipe, run_dir: Path) -> dict:
    from facefoundry.shards import finalize, write_split

    samples = shard_samples(run_dir)
    kept = sum(s.kept for s in samples)
    identities = len({s.identity for s in samples if s.kept})
    if kept == 0:
        logger.warning("the filter kept no samples of %d candidates: no shards", len(samples))
        return {
            "samples": len(samples),
            "kept": 0,
            "classes": 0,
            "empty": f"the filter kept none of {len(samples)} candidates",
        }
    write_split(samples, stage_dir, settings=recipe.shards)
    metrics = json.loads((run_dir / "filter" / "metrics.json").read_text())
    finalize(
        stage_dir,
        settings=recipe.shards,
        recipe_hash=stage_hash(Run(run_dir), "shards", recipe),
        quality={"filter": metrics.get("metrics", {}).get("after")},
    )
    return {"samples": len(samples), "kept": kept, "classes": identities}


# --- train --------------------------------------------------------------------------------
def train_body(stage_dir: Path, recipe: Recipe, run_dir: Path) -> dict:
    from facefoundry.evaluation.fr_train import train_recognizer

    shards = json.loads((run_dir / "shards" / "_SUCCESS.json").read_text())
    if int(shards.get("classes") or 0) < 2:
        message = (
            f"only {shards.get('classes') or 0} identities survived filtering: too few "
            "to train a recognizer (see the report's funnel)"
        )
        logger.warning(message)
        return {"skipped_reason": message}
    train_recognizer(
        run_dir / "shards", stage_dir, recipe.train, recipe.evaluation.lfw, progress=False
    )
    history = json.loads((stage_dir / "history.json").read_text())
    return {"epochs": len(history), "last": history[-1] if history else None}


# --- evaluate -----------------------------------------------------------------------------
def evaluate_body(stage_dir: Path, recipe: Recipe, run_dir: Path) -> dict:
    from facefoundry.evaluation.verify import evaluate_bin, evaluate_lfw

    if not (run_dir / "train" / "model.onnx").is_file():
        trained = json.loads((run_dir / "train" / "_SUCCESS.json").read_text())
        return {"skipped_reason": trained.get("skipped_reason", "no trained model")}
    model = f"onnx:{run_dir / 'train' / 'model.onnx'}"
    results = {}
    for pairs in recipe.evaluation.pairs:
        figures = evaluate_lfw(
            model,
            pairs,
            recipe.evaluation.lfw,
            recipe.evaluation.detector,
            recipe.evaluation.workers,
            recipe.evaluation.flip_tta,
            folds=recipe.evaluation.folds,
            progress=False,
        )
        (stage_dir / f"lfw-{pairs}.json").write_text(json.dumps(figures, indent=1))
        results[f"lfw-{pairs}"] = round(figures["accuracy"], 4)
    for path in recipe.evaluation.bins:
        figures = evaluate_bin(path, model, recipe.evaluation.flip_tta)
        (stage_dir / f"{Path(path).stem}.json").write_text(json.dumps(figures, indent=1))
        results[Path(path).stem] = round(figures["accuracy"], 4)
    return {"accuracy": results}


def run_simple_stage(run: Run, stage: str) -> dict:
    """Run one non-chunked stage (identities, filter, shards, train, evaluate)."""
    bodies = {
        "identities": lambda d, r: identities_body(d, r),
        "filter": lambda d, r: filter_body(d, r, run.run_dir),
        "shards": lambda d, r: shards_body(d, r, run.run_dir),
        "train": lambda d, r: train_body(d, r, run.run_dir),
        "evaluate": lambda d, r: evaluate_body(d, r, run.run_dir),
    }
    return run_stage(run, stage, bodies[stage])


def run_chunked_stage(run: Run, stage: str, map_units: Callable | None = None) -> dict:
    """generate / embed: plan the units, run each (via ``map_units`` when given, e.g.
    Prefect task mapping), then mark the stage done."""
    if stage == "generate":

        def body(stage_dir: Path, recipe: Recipe) -> dict:
            plan = plan_generate(run)
            units = [(run, part, ids) for part, ids in enumerate(plan)]
            outputs = (
                map_units(generate_unit, units) if map_units else [generate_unit(*u) for u in units]
            )
            return {"chunks": len(outputs)}
    elif stage == "embed":

        def body(stage_dir: Path, recipe: Recipe) -> dict:
            units = [(run, path) for path in plan_embed(run)]
            outputs = map_units(embed_unit, units) if map_units else [embed_unit(*u) for u in units]
            return {"parts": len(outputs)}
    else:
        raise ValueError(f"{stage} is not a chunked stage")
    return run_stage(run, stage, body)


def build(
    recipe: Recipe,
    runs_root: str | Path = "runs",
    stop_after: str | None = None,
    map_units: Callable | None = None,
) -> list[dict]:
    """Every stage in order, skipping current ones (the plain-Python end-to-end build)."""
    run = start_run(recipe, runs_root)
    results = []
    for stage in STAGES:
        if stage in ("generate", "embed"):
            results.append(run_chunked_stage(run, stage, map_units))
        else:
            results.append(run_simple_stage(run, stage))
        if stage == stop_after:
            break
    return results
