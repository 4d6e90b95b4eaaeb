"""Small deterministic shard samples for tests and benchmarks (no model, no data set).

Faces are smooth random colour fields (14x14 noise upsampled to 112x112),
JPEG-encoded: about 4 kB each, like real aligned faces, and distinct per
(identity, sample) so payload hashes are unique.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from facefoundry.shards.images import encode_face_jpeg
from facefoundry.shards.layout import make_key
from facefoundry.shards.sample import ShardSample

REJECT_REASONS = ("no_face", "low_similarity", "duplicate")


def synthetic_face(identity: int, sample: int, *, size: int = 112, quality: int = 90) -> bytes:
    """A deterministic RGB JPEG of ``size`` x ``size`` pixels for (identity, sample)."""
    from PIL import Image

    rng = np.random.default_rng([identity, sample])
    small = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
    image = Image.fromarray(small, "RGB").resize((size, size), Image.BILINEAR)
    return encode_face_jpeg(np.asarray(image), quality)


def synthetic_full(identity: int, sample: int) -> bytes:
    """A small deterministic PNG standing in for the full generated image."""
    import io

    from PIL import Image

    rng = np.random.default_rng([identity, sample, 1])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB").save(buf, "PNG")
    return buf.getvalue()


def synthetic_samples(
    identities: Iterable[int],
    per_identity: int,
    *,
    reject_every: int = 5,
    full_every: int = 0,
    face_pool: Sequence[bytes] | None = None,
    face_size: int = 112,
) -> Iterator[ShardSample]:
    """Candidate samples in key order: every ``reject_every``-th is rejected.

    ``face_pool`` reuses pre-encoded faces (round robin) instead of encoding
    one per sample, for benchmarks that must not measure JPEG encoding.
    ``full_every`` > 0 attaches a full PNG image to every n-th kept sample.
    """
    n = 0
    for identity in identities:
        for index in range(per_identity):
            key = make_key(identity, index)
            rejected = reject_every > 0 and index % reject_every == reject_every - 1
            if face_pool is not None:
                face = face_pool[n % len(face_pool)]
            else:
                face = synthetic_face(identity, index, size=face_size)
            n += 1
            common = {
                "key": key,
                "identity": identity,
                "generator": "synthetic",
                "seed": identity * 10_000 + index,
                "prompt": f"person {identity}",
                "det_score": round(0.5 + 0.5 * ((identity * 31 + index * 7) % 100) / 100, 4),
                "centroid_cos": round(0.3 + 0.6 * ((identity * 17 + index * 13) % 100) / 100, 4),
                "metadata": {"pose": index % 3},
            }
            if rejected:
                reason = REJECT_REASONS[(identity + index) % len(REJECT_REASONS)]
                no_face = reason == "no_face"
                yield ShardSample(
                    kept=False,
                    reject_reason=reason,
                    face_jpeg=None if no_face else face,
                    **common,
                )
            else:
                full = None
                if full_every > 0 and index % full_every == 0:
                    full = synthetic_full(identity, index)
                yield ShardSample(kept=True, face_jpeg=face, full_image=full, **common)
