"""The generator families: one registry entry per ``generate.family``.

A family is a settings model (its ``generate`` section, told apart by ``family``) and a
module that implements :class:`FamilyModule`. The generate stage, the identities
stage and the code digest ask the registry, never an if-chain; the contract test in
``tests/test_generator_families.py`` runs over every entry, as diffusers runs its
pipeline tester over every pipeline. Importing this module imports no torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Protocol

from pydantic import Field

from facefoundry.generators.id_booth.settings import IDBoothSettings
from facefoundry.generators.idiff_face.settings import IDiffFaceSettings
from facefoundry.generators.multi_id.settings import MultiIdSettings
from facefoundry.generators.settings import GeneratorSettings


@dataclass(frozen=True)
class IdentitySpace:
    """What identity vectors a family's model is conditioned on."""

    dim: int
    embedder: str
    prior: Path | None  # Gaussian of the training embeddings (the 'fitted' method)
    realisation: Path | None = None  # condition -> drawn-centroid map (select: predicted)


class FamilyModule(Protocol):
    """What every family's module provides (see ``generators/chunks.py`` for the chunk
    files a chunk must leave: ``part-NNNNN.tar`` + ``part-NNNNN.parquet``, parquet last)."""

    def generate_chunk(
        self,
        identities_path: str | Path,
        identity_ids: list[int],
        out_dir: str | Path,
        part: int,
        settings: GeneratorSettings,
        recipe_seed: int,
        cache_dir: str | Path | None = None,
    ) -> Path:
        """Write one chunk; per-identity artefacts worth keeping across re-runs with
        other settings (ID-Booth adapters) go to ``cache_dir``, keyed by their inputs.
        A module with ``REUSES_DRAWN = True`` also takes ``drawn``: a folder of chunks
        drawn earlier with the same settings and seeds (the probe funnel's), whose
        samples it copies instead of drawing them again."""

    def model_checksum(self, settings: GeneratorSettings) -> str: ...

    def identity_space(self, settings: GeneratorSettings) -> IdentitySpace: ...


@dataclass(frozen=True)
class GeneratorFamily:
    name: str
    settings: type[GeneratorSettings]
    module: str  # implements FamilyModule; its code (and what it imports) decides the images

    def load(self) -> FamilyModule:
        return importlib.import_module(self.module)  # type: ignore[return-value]

    def plan(self, identity_ids: list[int], settings: GeneratorSettings) -> list[list[int]]:
        """Identity ids per chunk: the unit of GPU work, retry and resume."""
        size = settings.chunk_identities
        return [identity_ids[i : i + size] for i in range(0, len(identity_ids), size)]


FAMILIES: dict[str, GeneratorFamily] = {
    family.name: family
    for family in (
        GeneratorFamily(
            "idiff_face", IDiffFaceSettings, "facefoundry.generators.idiff_face.generate"
        ),
        GeneratorFamily("id_booth", IDBoothSettings, "facefoundry.generators.id_booth.generate"),
        GeneratorFamily("multi_id", MultiIdSettings, "facefoundry.generators.multi_id.generate"),
    )
}
DEFAULT_FAMILY = "idiff_face"

GenerateSettings = Annotated[
    IDiffFaceSettings | IDBoothSettings | MultiIdSettings, Field(discriminator="family")
]


def family_of(settings: GeneratorSettings) -> GeneratorFamily:
    return FAMILIES[settings.family]  # type: ignore[attr-defined]
