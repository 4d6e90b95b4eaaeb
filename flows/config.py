"""The recipe schema: each stage's settings model composed into one typed document.

A misspelled key must fail before any work starts, naming the key, the file and
the nearest valid key; ``--set a.b=value`` overrides any field from the CLI.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from facefoundry.errors import UsageError
from facefoundry.evaluation.settings import CompareSettings, EvalSettings
from facefoundry.faces.settings import FaceSettings
from facefoundry.filters.settings import FilterSettings
from facefoundry.generators.families import DEFAULT_FAMILY, FAMILIES, GenerateSettings
from facefoundry.generators.settings import IdentitySettings
from facefoundry.recognition.settings import FRTrainSettings
from facefoundry.shards.settings import ShardSettings


class RecipeError(UsageError, ValueError):
    """A recipe that cannot be used; the message says where and how to fix it."""


class OrchestrationSettings(BaseModel):
    """Where Prefect runs the chunked tasks (generation, embedding)."""

    model_config = ConfigDict(extra="forbid")

    runner: str = Field("threads", pattern="^(threads|dask)$")
    max_workers: int = Field(1, ge=1, description="threads for chunk tasks (runner: threads)")
    dask_address: str | None = Field(None, description="scheduler of an existing Dask cluster")
    dask_workers: int = Field(2, ge=1, description="LocalCluster processes when no address")
    gpu_workers: bool = Field(False, description="dask_cuda.LocalCUDACluster, one per GPU")
    gpu_tasks: bool = Field(False, description="annotate generate/embed tasks with GPU: 1")
    retries: int = Field(2, ge=0)


class Recipe(BaseModel):
    """A whole facefoundry run: a name, a seed and one section per stage."""

    model_config = ConfigDict(extra="forbid")

    name: str = "run"
    seed: int = 0
    data_dir: str | None = Field(None, description="default $FACEFOUNDRY_DATA_DIR")
    identities: IdentitySettings = Field(default_factory=IdentitySettings)
    generate: GenerateSettings = Field(
        default_factory=FAMILIES[DEFAULT_FAMILY].settings,
        description="the generator family's section, chosen by generate.family",
    )
    faces: FaceSettings = Field(default_factory=FaceSettings)
    filter: FilterSettings = Field(default_factory=FilterSettings)
    shards: ShardSettings = Field(default_factory=ShardSettings)
    train: FRTrainSettings = Field(default_factory=FRTrainSettings)
    evaluation: EvalSettings = Field(default_factory=EvalSettings)
    compare: CompareSettings | None = Field(
        None, description="train the same recognizer on real faces and compare (None: off)"
    )
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)

    @field_validator("generate", mode="before")
    @classmethod
    def _default_family(cls, value: Any) -> Any:
        if isinstance(value, dict) and "family" not in value:
            return {"family": DEFAULT_FAMILY, **value}
        return value

    def section_hash(self, section: str) -> str:
        """Stable hash of one section (stages use it to decide whether to re-run)."""
        payload = json.dumps(getattr(self, section).model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _model_at(model: type[BaseModel], path: tuple) -> type[BaseModel] | None:
    for part in path:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _without_family_tag(loc: tuple) -> tuple[tuple, str | None]:
    """pydantic names the union member in the location (generate.id_booth.rank): drop it."""
    if len(loc) > 1 and loc[0] == "generate" and loc[1] in FAMILIES:
        return (loc[0], *loc[2:]), str(loc[1])
    return tuple(loc), None


def _explain(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        loc, family = _without_family_tag(item["loc"])
        location = ".".join(str(p) for p in loc)
        if item["type"] == "extra_forbidden":
            if family is not None:
                parent = _model_at(FAMILIES[family].settings, tuple(loc[1:-1]))
            else:
                parent = _model_at(Recipe, tuple(loc[:-1]))
            valid = sorted(parent.model_fields) if parent else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            where = f" for family {family}" if family else ""
            lines.append(
                f"{source}: unknown key '{location}'{where}{hint} (valid here: {', '.join(valid)})"
            )
        else:
            lines.append(f"{source}: '{location}': {item['msg']}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as YAML: 3 -> int, true -> bool)."""
    if "=" not in text:
        raise RecipeError(f"--set expects key.path=value, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(document: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = document
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {text}: '{part}' is not a section")
        node[path[-1]] = value
    return document


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (or the defaults), apply overrides, validate strictly."""
    source = str(path) if path else "<defaults>"
    document: dict = {}
    if path:
        try:
            document = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as error:
            raise RecipeError(f"recipe {path} does not exist") from error
        except yaml.YAMLError as error:
            raise RecipeError(f"{path}: not valid YAML: {error}") from error
        if not isinstance(document, dict):
            raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(document)}")
    document = apply_overrides(document, overrides or [])
    try:
        return Recipe.model_validate(document)
    except ValidationError as error:
        origin = source + (" (with --set overrides)" if overrides else "")
        raise RecipeError(_explain(error, origin)) from None


def dump_recipe(recipe: Recipe, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    return path
