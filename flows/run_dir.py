"""The run directory: every path a stage reads or writes, named once.

``runs/<name>/`` holds the resolved recipe and one folder per stage (see
docs/architecture.md). Stages receive these paths; none of them spells a run-folder
path of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MARKER = "_SUCCESS.json"


@dataclass(frozen=True)
class RunDir:
    """A run folder; each property is one file or folder of the stage contracts."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def stage(self, name: str) -> Path:
        return self.root / name

    def marker(self, stage: str) -> Path:
        return self.stage(stage) / MARKER

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.resolved.yaml"

    @property
    def identities(self) -> Path:
        return self.stage("identities") / "identities.parquet"

    @property
    def probes(self) -> Path:
        """The probe funnel's chunks (``identities.probe``): the probed identities' first samples."""
        return self.stage("identities") / "probes"

    @property
    def generate(self) -> Path:
        return self.stage("generate")

    def generate_parts(self) -> list[Path]:
        """Complete generation chunks (a chunk's parquet is written last)."""
        return sorted(self.generate.glob("part-*.parquet"))

    def generate_tars(self) -> list[Path]:
        return sorted(self.generate.glob("part-*.tar"))

    @property
    def embed(self) -> Path:
        return self.stage("embed")

    def embed_part(self, generate_tar: str | Path) -> Path:
        return self.embed / (Path(generate_tar).stem + ".parquet")

    @property
    def filter(self) -> Path:
        return self.stage("filter")

    @property
    def filter_decisions(self) -> Path:
        return self.filter / "decisions.parquet"

    @property
    def filter_metrics(self) -> Path:
        return self.filter / "metrics.json"

    @property
    def shards(self) -> Path:
        return self.stage("shards")

    @property
    def train(self) -> Path:
        return self.stage("train")

    @property
    def train_history(self) -> Path:
        return self.train / "history.json"

    @property
    def model_onnx(self) -> Path:
        return self.train / "model.onnx"

    @property
    def evaluate(self) -> Path:
        return self.stage("evaluate")

    def evaluate_results(self) -> list[Path]:
        return sorted(p for p in self.evaluate.glob("*.json") if p.name != MARKER)

    @property
    def cache(self) -> Path:
        """Artefacts keyed by their own inputs, kept across stage re-runs (ID-Booth
        adapters and prior images)."""
        return self.root / ".cache"

    @property
    def report(self) -> Path:
        return self.stage("report") / "report.html"
