"""Whether the judge agrees that the kept identities are distinct.

The filter de-duplicates identities with its own embedder. When the generator was trained
or steered with that same embedder (the default IDiff-Face model's identity loss, its
realisation map and probes all use SFace), identities can differ in what that embedder
sees and little else. Re-applying the de-duplication to the kept identities with the
judge's embeddings, at the judge's own threshold for the same false-match rate
(calibrated on real people), counts the identities an independent model also tells
apart. Of 100 real LFW people with 4-8 photos, dlib at FMR 1e-4 keeps ~82 at full
resolution and ~48 as 32 px faces (SFace: 96 and 96.5; BENCHMARKS.md, "Identity capacity
by an independent judge"); a share far below real faces' at the same resolution flags
identities only the filter separates.
"""

from __future__ import annotations

import numpy as np

from facefoundry.filters.calibrate import CalibrationError, resolve_threshold
from facefoundry.filters.dedup import greedy_dedup
from facefoundry.filters.groups import centroid_cosines, centroids, group_mean, valid_rows
from facefoundry.filters.samples import SampleTable, embedder_name
from facefoundry.filters.settings import Threshold


def judge_distinct(
    table: SampleTable,
    kept: np.ndarray,
    judge: str,
    fmr: float | None,
    calibration: str | None = None,
) -> dict:
    """``{"judge", "fmr", "tau", "kept_identities", "distinct_identities", "share"}``: of
    the identities with kept samples, how many the ``judge`` embedder still tells apart
    (greedy de-duplication of their judge centroids at the judge's cosine for ``fmr``,
    most consistent first, as the filter does). ``{"judge", "skipped": why}`` where the
    judge has no calibration for that FMR or too few identities are kept."""
    judge = embedder_name(judge)
    if fmr is None:
        return {"judge": judge, "skipped": "the filter's tau_inter has no false-match rate"}
    try:
        tau = resolve_threshold(
            Threshold(fmr=fmr), judge, table.checksums.get(judge), calibration
        ).cos
    except CalibrationError as error:
        return {"judge": judge, "skipped": str(error).splitlines()[0]}
    vectors = table.vectors(judge)
    usable = np.asarray(kept, dtype=bool) & valid_rows(vectors)
    centres, counts = centroids(vectors, table.groups, table.n_groups, usable)
    present = counts > 0
    identities = int(present.sum())
    if identities < 2:
        return {"judge": judge, "skipped": "fewer than two kept identities"}
    consistency = group_mean(
        centroid_cosines(vectors, table.groups, centres), table.groups, table.n_groups, usable
    )
    result = greedy_dedup(centres[present], tau, consistency[present])
    distinct = int(result.kept.sum())
    return {
        "judge": judge,
        "fmr": fmr,
        "tau": round(float(tau), 5),
        "kept_identities": identities,
        "distinct_identities": distinct,
        "share": round(distinct / identities, 4),
    }
