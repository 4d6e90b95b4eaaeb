"""Benchmark the shard writer and readers against the naive way, in the same run.

    python benchmarks/bench_shards.py [--quick]

Figures (the last printed line is one JSON object):
  write_ratio_vs_tarfile  our writer's samples/s (tar + manifest + stats, fsync, sha256)
                          over plain ``tarfile`` writing the same member bytes
  read_ratio_vs_tarfile   streaming read + decode to uint8 tensors (shard and sample
                          shuffle on) over ``tarfile`` + PIL decode to numpy
  Both ratios are the MEDIAN of the per-repeat ratios (each repeat runs every method
  back to back), with _min/_max/_runs beside them: never the best repeat.
  resume_identical        a writer killed with SIGKILL mid-way and re-run gives tars,
                          manifests and stats whose sha256 equal an uninterrupted run's
  peak_rss_mb_100k        peak RSS of a process writing 100k samples (and 10k, to show
                          that memory stays flat)
Data: deterministic 112x112 JPEG faces (~4 kB, tests/helpers/shards.py), generated here.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import describe, median_spread  # noqa: E402

from facefoundry.shards import ShardSettings, finalize, shard_urls, stream_dataset, write_split  # noqa: E402
from facefoundry.shards.index import IndexedShards  # noqa: E402
from facefoundry.shards.writer import encode_sample  # noqa: E402
from tests.helpers.shards import synthetic_face, synthetic_samples  # noqa: E402

PER_IDENTITY = 50
POOL = 512

RSS_CHILD = """
import json, sys, time
from facefoundry.shards import ShardSettings, write_split
from tests.helpers.shards import synthetic_face, synthetic_samples
n, out = int(sys.argv[1]), sys.argv[2]
pool = [synthetic_face(i, 0) for i in range(512)]
def status_mb(field):  # VmHWM: peak RSS of this process image (ru_maxrss survives exec)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
before = status_mb("VmRSS")
start = time.perf_counter()
result = write_split(synthetic_samples(range(n // 50), 50, reject_every=10, face_pool=pool), out)
seconds = time.perf_counter() - start
peak = status_mb("VmHWM")
print(json.dumps({"before_mb": before, "peak_mb": peak, "rows": result.n_rows,
                  "seconds": seconds, "shards": len(result.shards)}))
"""

KILL_CHILD = """
import sys, time
from pathlib import Path
from facefoundry.shards import ShardSettings, write_split
from tests.helpers.shards import synthetic_face, synthetic_samples
out, n, pause_at, ready = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
maxcount = int(sys.argv[5])
pool = [synthetic_face(i, 0) for i in range(512)]
def samples():  # after handing over sample pause_at: signal, then wait to be killed
    for i, s in enumerate(synthetic_samples(range(n // 50), 50, reject_every=10, face_pool=pool)):
        yield s
        if i == pause_at:
            ready.touch()
            time.sleep(600)
write_split(samples(), out, settings=ShardSettings(maxcount=maxcount))
"""


def log(msg: str) -> None:
    print(msg, flush=True)


def child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def write_tarfile(members: list, directory: Path, maxcount: int) -> None:
    """The naive way: tarfile, one TarInfo per member, same names/bytes/mtime as ours."""
    directory.mkdir(parents=True)
    for start in range(0, len(members), maxcount):
        path = directory / f"train-{start // maxcount:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
            for sample in members[start : start + maxcount]:
                for name, data in sample:
                    info = tarfile.TarInfo(name.decode())
                    info.size, info.mtime, info.mode = len(data), 0, 0o444
                    info.uname = info.gname = "bigdata"
                    tf.addfile(info, io.BytesIO(data))


def write_wds(members: list, keys: list[str], directory: Path, maxcount: int) -> None:
    import webdataset as wds

    directory.mkdir(parents=True)
    pattern = str(directory / "train-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=maxcount, mtime=0, encoder=False, verbose=0) as sink:
        for key, sample in zip(keys, members, strict=True):
            record = {"__key__": key}
            for name, data in sample:
                record[name.decode().split(".", 1)[1]] = data
            sink.write(record)


def read_tarfile_pil(urls: list[str]) -> int:
    from PIL import Image

    n = 0
    for url in urls:
        with tarfile.open(url) as tf:
            for member in tf:
                data = tf.extractfile(member).read()
                if member.name.endswith(".jpg"):
                    np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                    n += 1
                elif member.name.endswith(".id"):
                    int(data)
    return n


def read_wds_plain(urls: list[str]) -> int:
    import webdataset as wds

    dataset = wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("jpg", "id")
    return sum(1 for _ in dataset)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def file_hashes(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file() and p.suffix in (".tar", ".parquet", ".json")
    }


def resume_check(work: Path, n: int, maxcount: int) -> tuple[bool, dict]:
    """Kill a writer with SIGKILL in the middle of a shard (~60% through), re-run, compare sha256."""
    script = KILL_CHILD
    reference, killed, ready = work / "ref", work / "killed", work / "ready"
    pause_at = str(int(n * 0.6) + maxcount // 2)

    def run(out: Path, pause: str) -> None:
        cmd = [sys.executable, "-c", script, str(out), str(n), pause, str(ready), str(maxcount)]
        subprocess.run(cmd, check=True, env=child_env())

    run(reference, "-1")
    cmd = [sys.executable, "-c", script, str(killed), str(n), pause_at, str(ready), str(maxcount)]
    proc = subprocess.Popen(cmd, env=child_env())
    deadline = time.monotonic() + 300
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete = len(list(killed.glob("*_stats.json")))
    leftovers = len(list(killed.glob("*.tmp-*")))
    run(killed, "-1")
    ref_hashes, got = file_hashes(reference), file_hashes(killed)
    info = {
        "shards": sum(name.endswith(".tar") for name in ref_hashes),
        "complete_at_kill": complete,
        "tmp_files_at_kill": leftovers,
        "killed_by": "SIGKILL" if proc.returncode == -signal.SIGKILL else proc.returncode,
    }
    midway = proc.returncode == -signal.SIGKILL and 0 < complete < info["shards"] and leftovers > 0
    return midway and ref_hashes == got and len(got) > 0, info


def rss_run(work: Path, n: int) -> dict:
    out = work / f"rss{n}"
    proc = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, str(n), str(out)],
        check=True,
        capture_output=True,
        text=True,
        env=child_env(),
    )
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, under ~2 minutes")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)"
    )
    args = parser.parse_args()
    n = 4_000 if args.quick else 20_000
    repeats = 3 if args.quick else 5
    maxcount = 1_000 if args.quick else 5_000
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench_shards_", dir=args.workdir))
    try:
        log(
            f"# bench_shards: {n} samples, {repeats} repeats, maxcount {maxcount}, {os.cpu_count()} CPUs, work dir {work}"
        )
        pool = [synthetic_face(i, 0) for i in range(POOL)]
        samples = list(
            synthetic_samples(
                range(n // PER_IDENTITY), PER_IDENTITY, reject_every=0, face_pool=pool
            )
        )
        settings = ShardSettings(maxcount=maxcount)
        labels = {
            identity: label for label, identity in enumerate(sorted({s.identity for s in samples}))
        }
        members = [encode_sample(s, settings, labels[s.identity]).members for s in samples]
        keys = [s.key for s in samples]
        payload_mb = sum(len(d) for m in members for _, d in m) / 1e6

        times: dict[str, list[float]] = {"tarfile": [], "wds_shardwriter": [], "ours": []}
        for r in range(repeats):
            for name in times:
                out = work / f"w_{name}_{r}"
                if name == "tarfile":
                    times[name].append(timed(lambda o=out: write_tarfile(members, o, maxcount)))
                elif name == "wds_shardwriter":
                    times[name].append(timed(lambda o=out: write_wds(members, keys, o, maxcount)))
                else:
                    times[name].append(
                        timed(lambda o=out: write_split(samples, o, settings=settings))
                    )
                if r < repeats - 1 or name != "ours":
                    shutil.rmtree(out)
        ours_dir = work / f"w_ours_{repeats - 1}"
        write = {k: n / statistics.median(v) for k, v in times.items()}
        for k, v in times.items():
            log(f"write {k:16s} {describe([n / t for t in v], 'samples/s', 0)}")
        log(f"      ({payload_mb:.0f} MB payload per run)")
        # each repeat ran every writer back to back: the ratio per repeat is paired
        write_ratios = [t / o for t, o in zip(times["tarfile"], times["ours"], strict=True)]
        log(f"write ratio ours/tarfile {describe(write_ratios)}")

        finalize(ours_dir)
        urls = shard_urls(ours_dir)
        read_times: dict[str, list[float]] = {
            "tarfile_pil": [],
            "wds_plain": [],
            "ours": [],
            "ours_batched": [],
        }
        for _ in range(repeats):
            read_times["tarfile_pil"].append(timed(lambda: read_tarfile_pil(urls)))
            read_times["wds_plain"].append(timed(lambda: read_wds_plain(urls)))
            read_times["ours"].append(timed(lambda: sum(1 for _ in stream_dataset(ours_dir))))
            read_times["ours_batched"].append(
                timed(lambda: sum(1 for _ in stream_dataset(ours_dir, batch_size=256)))
            )
        read = {k: n / statistics.median(v) for k, v in read_times.items()}
        for k, v in read_times.items():
            log(f"read  {k:16s} {describe([n / t for t in v], 'samples/s', 0)} (decode to uint8)")
        read_ratios = [
            t / o for t, o in zip(read_times["tarfile_pil"], read_times["ours"], strict=True)
        ]
        log(f"read ratio ours/tarfile+PIL {describe(read_ratios)}")

        indexed = IndexedShards(ours_dir / "train.index.json")
        order = np.random.default_rng(0).permutation(n)[: min(n, 2000)]
        seconds = timed(lambda: [indexed[int(i)] for i in order])
        random_access = len(order) / seconds
        log(f"read  random access    {random_access:9.0f} samples/s  (IndexedShards, decode)")
        shutil.rmtree(work / f"w_ours_{repeats - 1}")

        resume_ok, resume_info = resume_check(
            work, 3_000 if args.quick else 10_000, 250 if args.quick else 1_000
        )
        log(f"resume after SIGKILL identical: {resume_ok} {resume_info}")
        rss10 = rss_run(work, 10_000)
        rss100 = rss_run(work, 100_000)
        log(
            f"peak RSS writing 10k: {rss10['peak_mb']:.0f} MB, 100k: {rss100['peak_mb']:.0f} MB "
            f"(RSS before writing {rss100['before_mb']:.0f} MB; 100k at {rss100['rows'] / rss100['seconds']:.0f} rows/s)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()[0]
    write_spread, read_spread = median_spread(write_ratios), median_spread(read_ratios)
    result = {
        # headlines: the median of the per-repeat (paired) ratios; spread beside them
        "write_ratio_vs_tarfile": write_spread["median"],
        "write_ratio_vs_tarfile_min": write_spread["min"],
        "write_ratio_vs_tarfile_max": write_spread["max"],
        "write_ratio_vs_tarfile_runs": write_spread["runs"],
        "read_ratio_vs_tarfile": read_spread["median"],
        "read_ratio_vs_tarfile_min": read_spread["min"],
        "read_ratio_vs_tarfile_max": read_spread["max"],
        "read_ratio_vs_tarfile_runs": read_spread["runs"],
        "ratio_of_median_rates": {
            "write": round(write["ours"] / write["tarfile"], 3),
            "read": round(read["ours"] / read["tarfile_pil"], 3),
        },
        "resume_identical": resume_ok,
        "peak_rss_mb_100k": round(rss100["peak_mb"], 1),
        "peak_rss_mb_10k": round(rss10["peak_mb"], 1),
        "rss_before_write_mb_100k": round(rss100["before_mb"], 1),
        "write_samples_per_s": {k: round(v) for k, v in write.items()},  # medians
        "read_samples_per_s": {k: round(v) for k, v in read.items()},  # medians
        "write_samples_per_s_spread": {
            k: median_spread([n / t for t in v], 0) for k, v in times.items()
        },
        "read_samples_per_s_spread": {
            k: median_spread([n / t for t in v], 0) for k, v in read_times.items()
        },
        "random_access_samples_per_s": round(random_access),
        "write_100k_rows_per_s": round(rss100["rows"] / rss100["seconds"]),
        "resume": resume_info,
        "n_samples": n,
        "repeats": repeats,
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "loadavg_start_end": [round(load_start, 2), round(load_end, 2)],
        "date": datetime.date.today().isoformat(),
    }
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
