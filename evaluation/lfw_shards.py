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
    people: list[tuple[str, int]] | None = None,
) -> Path:
    """Write (or reuse, when dataset.json exists) shards of the listed LFW people.

    ``people``: (name, images) rows to use instead of the whole people file (each
    person's first ``images`` photos), e.g. from ``match_people``."""
    from facefoundry.evaluation.aligned_pairs import align_lfw_images
    from facefoundry.shards import ShardSample, encode_face_jpeg, finalize, make_key, write_split

    out_dir = Path(out_dir)
    if (out_dir / "dataset.json").is_file():
        return out_dir
    lfw = Lfw(lfw_root)
    if people is None:
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


def match_people(
    available: list[tuple[str, int]], per_identity: list[int], min_images: int = 2
) -> list[tuple[str, int]]:
    """Real people shaped like a synthetic set: one person per synthetic identity, with
    as many images as it has where the person has them.

    Synthetic identities are visited from the largest to the smallest; each takes the
    remaining real person with the most images (at least ``min_images``: a person with one
    photo gives no genuine pair), and ``min(its count, theirs)`` of their photos. When
    real people run out, the real set has fewer identities; the caller reports both
    counts. Deterministic: ties keep the people file's order.
    """
    people = sorted((row for row in available if row[1] >= min_images), key=lambda row: -row[1])
    wanted = sorted((int(count) for count in per_identity if count > 0), reverse=True)
    return [(name, min(count, want)) for (name, count), want in zip(people, wanted, strict=False)]
