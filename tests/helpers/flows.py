"""A tiny end-to-end recipe for flow tests."""

from __future__ import annotations

import yaml


def tiny_recipe(tmp_path, model, **sections) -> str:
    document = {
        "name": "tiny",
        "seed": 3,
        "identities": {"count": 4, "method": "separated", "tau": 0.9},
        "generate": {
            "model": str(model),
            "samples_per_identity": 3,
            "steps": 3,
            "chunk_identities": 2,
        },
        "filter": {"judge_embedder": "dlib", "min_samples": 2},
        "train": {
            "backbone": "mbf_small",
            "embedding_dim": 32,
            "epochs": 2,
            "batch_size": 4,
            "warmup_epochs": 0.0,
            "learning_rate": 0.05,
            "scale": 16.0,
            "loader_workers": 0,
            "val_pairs": None,
        },
        "evaluation": {"pairs": ["devtest"], "folds": [0], "workers": 1},
    }
    for key, value in sections.items():
        document.setdefault(key, {}).update(value)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)
