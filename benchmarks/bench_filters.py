"""Filter stage: exact de-duplication at scale, planted duplicates, LFW separability, Dask speed-up.

Usage: python benchmarks/bench_filters.py [--quick] [--lfw DIR] [--calibration-out DIR]
  full:  de-duplication of 10k/30k/100k random 512-d identities (bf16 screen + float32
         re-check, and plain float32 at 100k), 200 planted duplicates among 20k,
         LFW people with >= 2 images (all 1,680, up to 10 images each) embedded with
         SFace and dlib on a 2-worker Dask cluster, EER and FMR calibration per model.
  quick: 3k/10k/30k de-duplication (no 100k figures), 50 planted among 5k, 100 LFW
         people with up to 4 images (< 2 minutes).
Both: the bf16 screen's decisions against plain float32 (and faiss when installed) on
data where merges happen: planted near-duplicates, many of them within the screen's
error of tau on either side (screen_* keys; screen_check_pass is false when the merge
sets or partners differ, or when the screen merges nothing or not exactly the planted;
at tau 0.4 and at 0.4085, where bf16 rounding alone would flip decisions).
The timing runs (dedup_*) are random vectors, where nothing is merged at tau 0.4.
Last line: one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO, finish, machine  # noqa: I001


def dedup_child(n: int, dim: int, screen: str) -> None:
    """Run in a fresh process: time greedy_dedup on n random unit vectors; print JSON."""
    from facefoundry.filters.dedup import greedy_dedup
    from facefoundry.filters.neighbours import choose_screen
    from tests.helpers.filters import random_unit

    vectors = random_unit(n, dim, seed=n)
    started = time.perf_counter()
    # torch pinned: with faiss installed "auto" would time faiss, which has no screen
    result = greedy_dedup(vectors, 0.4, block=2048, backend="torch", screen=screen)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "n": n,
                "dim": dim,
                "seconds": seconds,
                "peak_mb": peak_mb,
                "merged": result.n_merged,
                "bf16_screen": choose_screen(screen),
            }
        )
    )


def run_dedup(n: int, dim: int = 512, screen: str = "auto") -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--dedup-child", str(n), str(dim), screen],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def planted(n: int, n_planted: int, seed: int = 7) -> dict:
    """Planted near-duplicate pairs (cos 0.45..0.95) and near misses (0.30..0.38) at tau 0.4."""
    from facefoundry.filters.dedup import greedy_dedup
    from tests.helpers.filters import at_cosine, plant_duplicates

    vectors, orig, dup = plant_duplicates(n, 512, n_planted, (0.45, 0.95), seed)
    rng = np.random.default_rng(seed)
    free = np.setdiff1d(np.arange(n), np.concatenate([orig, dup]))
    miss = rng.choice(free, size=2 * n_planted, replace=False)
    vectors[miss[n_planted:]] = at_cosine(
        vectors[miss[:n_planted]], rng.uniform(0.30, 0.38, n_planted), seed + 2
    )
    priority = rng.random(n)
    started = time.perf_counter()
    result = greedy_dedup(vectors, 0.4, priority, backend="torch")  # as before faiss was in dev
    seconds = time.perf_counter() - started
    merged = set(np.flatnonzero(~result.kept).tolist())
    found = 0
    for a, b in zip(orig.tolist(), dup.tolist(), strict=True):
        pair = {a, b}
        hit = pair & merged
        if len(hit) == 1 and result.partner[hit.pop()] in pair:
            found += 1
    planted_rows = set(orig.tolist()) | set(dup.tolist())
    extra = len(merged - planted_rows) + sum(
        1 for a, b in zip(orig, dup, strict=True) if a in merged and b in merged
    )
    return {
        "planted_found": found,
        "planted_total": n_planted,
        "false_merges": extra,
        "planted_near_misses": n_planted,
        "planted_n": n,
        "planted_seconds": round(seconds, 2),
    }


def screen_data(n: int, n_planted: int, tau: float, seed: int = 21):
    """Random 512-d unit rows with planted pairs: (vectors, orig, dup, expected merged rows).

    Quarters of the planted pairs: clearly above tau (0.45-0.95), just above (tau + 1e-5
    .. tau + 1e-3, where rounding the product to bf16 can land below tau), a little above
    (tau + 1e-3 .. tau + 0.012, within the bf16 error) and just below (tau - 0.012 ..
    tau - 1e-5: must stay). Only the first three quarters are merged.
    """
    from tests.helpers.filters import at_cosine, random_unit

    rng = np.random.default_rng(seed)
    vectors = random_unit(n, 512, seed)
    chosen = rng.choice(n, size=2 * n_planted, replace=False)
    orig, dup = chosen[:n_planted], chosen[n_planted:]
    quarter = n_planted // 4
    cos = np.concatenate(
        [
            rng.uniform(0.45, 0.95, quarter),
            tau + rng.uniform(1e-5, 1e-3, quarter),
            tau + rng.uniform(1e-3, 0.012, quarter),
            tau - rng.uniform(1e-5, 0.012, n_planted - 3 * quarter),
        ]
    )
    vectors[dup] = at_cosine(vectors[orig], cos, seed + 1000)
    # the float32 cosine decides (at_cosine is exact to ~1e-7): expected from the vectors
    exact = np.einsum("ij,ij->i", vectors[dup], vectors[orig])
    return vectors, orig, dup, np.sort(dup[exact > tau])


# 0.4: the default (Vec2Face's rule). 0.4085: just below the midpoint of two bf16 values
# (0.408203125, 0.41015625), so products just above it round DOWN below it in bf16: a
# screen without its float32 re-check (or with too small a margin) drops those merges.
SCREEN_TAUS = (0.4, 0.4085)


def screen_agreement(n: int, n_planted: int, taus: tuple = SCREEN_TAUS) -> dict:
    """bf16 screen vs float32 (and faiss) de-duplication decisions on planted duplicates."""
    from facefoundry.filters.dedup import greedy_dedup
    from facefoundry.filters.neighbours import cpu_has_bf16, faiss_available

    checks = []
    for tau in taus:
        vectors, orig, dup, expected = screen_data(n, n_planted, tau)
        priority = np.random.default_rng(5).random(n)
        priority[orig] += 1.0  # originals first: a planted duplicate merges into its original
        results, seconds = {}, {}
        backends = [("float32", "torch", "none"), ("bf16", "torch", "bf16")]
        if faiss_available():
            backends.append(("faiss", "faiss", "none"))
        for label, backend, screen in backends:
            started = time.perf_counter()
            results[label] = greedy_dedup(vectors, tau, priority, backend=backend, screen=screen)
            seconds[label] = round(time.perf_counter() - started, 2)
        exact, screened = results["float32"], results["bf16"]
        merged = {k: np.flatnonzero(~r.kept) for k, r in results.items()}
        partner_of = dict(zip(dup.tolist(), orig.tolist(), strict=True))
        right = sum(partner_of.get(int(i)) == screened.partner[i] for i in merged["bf16"])
        check = {
            "tau": tau,
            "expected_merges": int(len(expected)),
            "merges_float32": int(len(merged["float32"])),
            "merges_bf16": int(len(merged["bf16"])),
            "identical_merges": bool(np.array_equal(screened.kept, exact.kept)),
            "identical_partners": bool(np.array_equal(screened.partner, exact.partner)),
            "bf16_merges_are_the_planted": bool(np.array_equal(merged["bf16"], expected)),
            "bf16_partner_right": int(right),
            "seconds": seconds,
        }
        if "faiss" in results:
            check["faiss_identical_merges"] = bool(
                np.array_equal(results["faiss"].kept, exact.kept)
            )
            check["faiss_identical_partners"] = bool(
                np.array_equal(results["faiss"].partner, exact.partner)
            )
        checks.append(check)
    with_faiss = [c for c in checks if "faiss_identical_merges" in c]
    return {
        "screen_checks": checks,
        "screen_check_n": n,
        "screen_check_planted": n_planted,
        "screen_merges_float32": sum(c["merges_float32"] for c in checks),
        "screen_merges_bf16": sum(c["merges_bf16"] for c in checks),
        "screen_identical_merges": all(c["identical_merges"] for c in checks),
        "screen_identical_partners": all(c["identical_partners"] for c in checks),
        "screen_cpu_bf16_native": cpu_has_bf16(),
        "screen_check_pass": all(
            c["identical_merges"]
            and c["identical_partners"]
            and c["expected_merges"] > 0
            and c["bf16_merges_are_the_planted"]
            and c["bf16_partner_right"] == c["expected_merges"]
            for c in checks
        ),
        "faiss_identical_merges": all(c["faiss_identical_merges"] for c in with_faiss)
        if with_faiss
        else None,
        "faiss_identical_partners": all(c["faiss_identical_partners"] for c in with_faiss)
        if with_faiss
        else None,
    }


def lfw_items(lfw, per_person: int, people: int | None, seed: int = 0) -> list:
    from facefoundry.evaluation.lfw import image_name, read_people

    counts: dict[str, int] = {}
    for name, count in read_people(lfw.protocol_file("people.txt")):
        counts[name] = counts.get(name, 0) + count
    multi = sorted(name for name, count in counts.items() if count >= 2)
    rng = np.random.default_rng(seed)
    if people is not None:
        multi = sorted(rng.choice(multi, size=people, replace=False).tolist())
    names = []
    for person in multi:
        numbers = np.arange(1, counts[person] + 1)
        if len(numbers) > per_person:
            numbers = np.sort(rng.choice(numbers, size=per_person, replace=False))
        names.extend((image_name(person, int(k)), person) for k in numbers)
    data = dict(lfw.read_many([name for name, _ in names]))
    return [(name, person, data[name]) for name, person in names]


def partitions(items: list, size: int = 64) -> list:
    from facefoundry.faces.embed_stage import Partition

    return [
        Partition(f"part-{i // size:05d}", items[i : i + size]) for i in range(0, len(items), size)
    ]


def dask_speedup(items: list, workdir: Path, repeats: int) -> dict:
    """SFace embedding of the same partitions: 1 process vs a 2-worker LocalCluster.

    Models are loaded before timing in both (cold figures add the loads and the
    cluster start); the two are run alternately ``repeats`` times and the medians
    compared, so a burst of other load on a shared machine hits both alike.
    """
    from facefoundry.faces.embed_stage import (
        embed_partitions,
        local_client,
        preload_models,
        worker_models,
    )

    parts = partitions(items, 32)
    cold = time.perf_counter()
    worker_models("yunet", ["sface"])
    load_1 = time.perf_counter() - cold
    cold = time.perf_counter()
    client = local_client(2)
    one, two = [], []
    try:
        preload_models(client, "yunet", ["sface"])
        startup = time.perf_counter() - cold
        for repeat in range(repeats):
            started = time.perf_counter()
            embed_partitions(
                parts, workdir / f"one{repeat}", embedders=["sface"], workers=0, progress=False
            )
            one.append(time.perf_counter() - started)
            started = time.perf_counter()
            embed_partitions(
                parts, workdir / f"two{repeat}", embedders=["sface"], client=client, progress=False
            )
            two.append(time.perf_counter() - started)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    one_s, two_s = float(np.median(one)), float(np.median(two))

    def cpu_ms(prefix: str) -> float:  # task CPU time per image, from the parts' stats files
        stats = [json.loads(p.read_text()) for p in workdir.glob(f"{prefix}*/*_stats.json")]
        return 1000 * sum(s["cpu_seconds"] for s in stats) / sum(s["rows"] for s in stats)

    return {
        "dask_speedup_2_workers": round(one_s / two_s, 2),
        "dask_speedup_2_workers_cold": round((one[0] + load_1) / (two[0] + startup), 2),
        "dask_images": len(items),
        "dask_repeats": repeats,
        "dask_1proc_seconds": [round(t, 1) for t in one],
        "dask_2workers_seconds": [round(t, 1) for t in two],
        "dask_1proc_images_per_s": round(len(items) / one_s, 1),
        "dask_2workers_images_per_s": round(len(items) / two_s, 1),
        "dask_cluster_start_and_load_s": round(startup, 1),
        "dask_cpu_ms_per_image_1proc": round(cpu_ms("one"), 1),
        "dask_cpu_ms_per_image_2workers": round(cpu_ms("two"), 1),
    }


def lfw_separability(
    items: list, workdir: Path, n_impostor: int, calibration_out: str | None
) -> dict:
    from facefoundry.evaluation.protocol import equal_error_rate as reference_eer
    from facefoundry.faces.embed_stage import embed_partitions
    from facefoundry.filters.calibrate import calibrate_embeddings, save_calibration
    from facefoundry.filters.metrics import equal_error_rate, fnmr_at_fmr, verification_figures
    from facefoundry.filters.pairs import genuine_pairs, impostor_pairs, pair_scores
    from facefoundry.filters.samples import read_samples

    started = time.perf_counter()
    embed_partitions(partitions(items), workdir / "embed", embedders=["sface", "dlib"], workers=2)
    seconds = time.perf_counter() - started
    table = read_samples(workdir / "embed", ["sface", "dlib"])
    out = {
        "lfw_people": int(table.n_groups),
        "lfw_images": len(table),
        "lfw_embed_seconds_2_workers": round(seconds, 1),
        "lfw_no_face": int(np.sum(table.status != "ok")),
    }
    for name in ("sface", "dlib"):
        vectors = table.vectors(name)
        ok = np.isfinite(vectors).all(axis=1)
        groups = np.where(ok, table.groups, -1)
        ga, gb, exhaustive = genuine_pairs(groups, 10**7)
        ia, ib = impostor_pairs(groups, n_impostor, seed=0)
        genuine, impostor = pair_scores(vectors, ga, gb), pair_scores(vectors, ia, ib)
        eer, threshold = equal_error_rate(genuine, impostor)
        scores = np.concatenate([genuine, impostor])
        same = np.r_[np.ones(len(genuine), bool), np.zeros(len(impostor), bool)]
        figures = verification_figures(genuine, impostor)
        out[f"lfw_eer_{name}"] = round(eer, 5)
        out[f"lfw_{name}"] = {
            "eer": eer,
            "eer_threshold_cos": threshold,
            "eer_evaluation_protocol": reference_eer(scores, same)[0],
            "fnmr_at_fmr_1e-2": fnmr_at_fmr(genuine, impostor, 1e-2)["fnmr"],
            "fnmr_at_fmr_1e-3": fnmr_at_fmr(genuine, impostor, 1e-3)["fnmr"],
            "fdr": figures["fdr"],
            "d_prime": figures["d_prime"],
            "genuine_pairs": int(len(genuine)),
            "genuine_all_pairs": exhaustive,
            "impostor_pairs": int(len(impostor)),
            "genuine_mean": float(genuine.mean()),
            "impostor_mean": float(impostor.mean()),
        }
        calibration = calibrate_embeddings(
            vectors,
            table.identities,
            name,
            table.checksums.get(name),
            n_pairs=2_000_000,
            seed=0,
            source=f"LFW deep-funneled, {table.n_groups} people with >= 2 images "
            f"(<= 10 images each), YuNet + {name}, no flip",
        )
        out[f"lfw_{name}"]["cos_at_fmr"] = {
            k: round(calibration.cos_at(k), 4) for k in (1e-2, 1e-3, 1e-4)
        }
        if calibration_out:
            out[f"lfw_{name}"]["calibration_file"] = str(
                save_calibration(calibration, calibration_out)
            )
    return out


def stage_throughput(identities: int, per_identity: int) -> dict:
    """run_filter on synthetic 128-d sface/dlib-like embeddings (cosine thresholds)."""
    from facefoundry.filters.settings import FilterSettings
    from facefoundry.filters.stage import run_filter
    from tests.helpers.filters import identity_samples, random_unit, write_embed_part

    centres = random_unit(identities, 128, 1)
    sface, ident = identity_samples(centres, per_identity, 0.07, 2)
    dlib, _ = identity_samples(random_unit(identities, 128, 3), per_identity, 0.07, 4)
    keys = [f"s{i:09d}" for i in range(len(ident))]
    with tempfile.TemporaryDirectory() as tmp:
        step = 100_000
        for part, start in enumerate(range(0, len(keys), step)):
            write_embed_part(
                Path(tmp) / "embed" / f"part-{part:05d}.parquet",
                keys[start : start + step],
                ident[start : start + step],
                {"sface": sface[start : start + step], "dlib": dlib[start : start + step]},
            )
        settings = FilterSettings(
            min_centroid_cos=0.3, tau_inter=0.4, tau_priv=None, metric_threshold=0.5
        )
        started = time.perf_counter()
        run_filter(tmp, Path(tmp) / "filter", settings)
        seconds = time.perf_counter() - started
        metrics = json.loads((Path(tmp) / "filter" / "metrics.json").read_text())
    return {
        "stage_samples": len(keys),
        "stage_identities": identities,
        "stage_seconds": round(seconds, 1),
        "stage_timings": {k: round(v, 2) for k, v in metrics["timings"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 2 minutes")
    parser.add_argument(
        "--lfw", default=None, help="LFW folder (default $FACEFOUNDRY_DATA_DIR/lfw)"
    )
    parser.add_argument("--calibration-out", default=None, help="write LFW calibrations here")
    parser.add_argument("--dedup-child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dedup_child:
        n, dim, screen = args.dedup_child
        dedup_child(int(n), int(dim), screen)
        return

    from facefoundry.evaluation.lfw import Lfw

    figures: dict = {"machine": machine(), "quick": args.quick}
    figures.update(planted(5_000 if args.quick else 20_000, 50 if args.quick else 200))
    print(
        "planted:",
        {k: figures[k] for k in ("planted_found", "planted_total", "false_merges")},
        flush=True,
    )

    figures.update(screen_agreement(6_000, 400) if args.quick else screen_agreement(30_000, 1_200))
    print(
        "screen vs float32:",
        {k: v for k, v in figures.items() if k.startswith(("screen_", "faiss_"))},
        flush=True,
    )

    sizes = (3_000, 10_000, 30_000) if args.quick else (10_000, 30_000, 100_000)
    runs = [run_dedup(n) for n in sizes]
    for run in runs:
        print("dedup:", run, flush=True)
    slope = np.polyfit(np.log([r["n"] for r in runs]), np.log([r["seconds"] for r in runs]), 1)[0]
    figures["dedup_runs"] = runs
    figures["dedup_growth_exponent"] = round(float(slope), 2)
    figures["dedup_growth_sizes"] = list(sizes)
    big = runs[-1] if sizes[-1] == 100_000 else None
    figures["dedup_100k_512_seconds"] = round(big["seconds"], 1) if big else None
    figures["dedup_100k_512_peak_mb"] = round(big["peak_mb"], 0) if big else None
    figures["dedup_bf16_screen"] = runs[-1]["bf16_screen"]
    if not args.quick:
        plain = run_dedup(100_000, 512, "none")
        print("dedup float32:", plain, flush=True)
        figures["dedup_100k_512_seconds_float32"] = round(plain["seconds"], 1)
        figures["dedup_100k_512_peak_mb_float32"] = round(plain["peak_mb"], 0)

    figures.update(stage_throughput(2_000, 10) if args.quick else stage_throughput(20_000, 20))
    print("stage:", figures["stage_seconds"], "s", flush=True)

    lfw = Lfw(args.lfw)
    items = lfw_items(lfw, 4 if args.quick else 10, 100 if args.quick else None)
    with tempfile.TemporaryDirectory() as tmp:
        speed_items = items[: 128 if args.quick else 512]
        figures.update(dask_speedup(speed_items, Path(tmp), 1 if args.quick else 3))
        print("dask:", figures["dask_speedup_2_workers"], flush=True)
        figures.update(
            lfw_separability(
                items, Path(tmp), 50_000 if args.quick else 500_000, args.calibration_out
            )
        )
    print("lfw EER:", figures["lfw_eer_sface"], figures["lfw_eer_dlib"], flush=True)
    finish(figures)


if __name__ == "__main__":
    main()
