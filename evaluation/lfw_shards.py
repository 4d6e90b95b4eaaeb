"""Real-data shards from LFW people (the authentic baseline that proves the trainer).

LFW DevTrain people are detected and aligned by faces/ and written with shards/, one
identity per person; DevTest people stay unseen for validation.
"""

from __future__ import annotations

import logging
from pathlib import Path

from facefoundry.evaluation.lfw import Lfw, people_images, read_people

logger = logging.getLogger(__name__)


def write_lfw_shards(
    out_dir: str | Path,
    lfw_root: str | Path | None = None,
    people_file: str = "peopleDevTrain.txt",
    workers: int = 2,
    limit_people: int | None = None,
    progress: bool = True,
) -> Path:
    """Write (or reuse, when dataset.json exists) shards of the listed LFW people."""
    from facefoundry.evaluation.aligned_pairs import align_lfw_images
    from facefoundry.shards import ShardSample, encode_face_jpeg, finalize, make_key, write_split

    out_dir = Path(out_dir)
    if (out_dir / "dataset.json").is_file():
        return out_dir
    lfw = Lfw(lfw_root)
    people = read_people(lfw.protocol_file(people_file))[:limit_people]
    names, identities = people_images(people)
    result = align_lfw_images(lfw, names, "reject", f"align {people_file}", workers, progress)
    samples = []
    counters: dict[int, int] = {}
    for identity, outcome, face in zip(identities, result.outcomes, result.aligned, strict=True):
        index = counters.get(identity, 0)
        counters[identity] = index + 1
        key = make_key(identity, index)
        if outcome.embedded:
            samples.append(
                ShardSample(
                    key=key,
                    identity=identity,
                    kept=True,
                    face_jpeg=encode_face_jpeg(face),
                    generator="lfw",
                    det_score=outcome.det_score,
                    metadata={"source": outcome.key},
                )
            )
        else:
            samples.append(
                ShardSample(
                    key=key,
                    identity=identity,
                    kept=False,
                    reject_reason=outcome.status,
                    generator="lfw",
                    metadata={"source": outcome.key},
                )
            )
    write_split(samples, out_dir)
    finalize(out_dir, quality={"source": f"LFW {people_file}"})
    return out_dir
