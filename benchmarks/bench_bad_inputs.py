"""Bad input, driven through the CLI as a user would: every case must end in a clear
one-line error (or a recorded reject), never a traceback, and nothing written before
the fault may be lost.

Cases cover every command group: corrupt / empty / huge images and a non-image in a
folder, a corrupt .tgz, truncated, tampered and path-traversal shards, NaN embeddings,
wrong recipe keys and types, missing folders and files, a read-only output folder, a
full disk (a small tmpfs, or RLIMIT_FSIZE where mounting is not allowed), and a SIGKILL
at a random point of ``facefoundry run`` followed by a rerun whose shards must equal an
uninterrupted run's.

Last line: JSON with ``cases``, ``clear_errors``, ``tracebacks`` (target 0),
``data_lost`` (target 0) and the per-case table.

    python benchmarks/bench_bad_inputs.py            # all cases (~5 min on 2 cores)
    python benchmarks/bench_bad_inputs.py --quick    # without the SIGKILL run
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import REPO, finish, machine

CLI = [sys.executable, "-m", "facefoundry.flows.cli"]
# ours ("facefoundry: error: ...") or argparse's usage errors ("facefoundry run: error: ...")
ERROR_LINE = re.compile(r"^facefoundry( [\w-]+)*: error: ")


@dataclass
class Case:
    name: str
    group: str
    argv: list[str]
    expect: str = "error"  # error | reject | problems
    check: Callable[[subprocess.CompletedProcess], bool] | None = None
    protect: list[Path] = field(default_factory=list)  # files that must survive intact
    preexec: Callable[[], None] | None = None
    cwd: Path | None = None


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def run_case(case: Case) -> dict:
    before = {str(p): digest(p) for p in case.protect}
    started = time.perf_counter()
    done = subprocess.run(
        [*CLI, *case.argv],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=600,
        preexec_fn=case.preexec,
        cwd=case.cwd or REPO,
    )
    seconds = time.perf_counter() - started
    stderr = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in stderr if ERROR_LINE.match(line)]
    traceback = "Traceback (most recent call last)" in done.stderr
    if case.expect == "error":
        clear = done.returncode in (1, 2) and len(errors) == 1 and not traceback
    elif case.expect == "problems":
        clear = done.returncode == 1 and not traceback and bool(case.check and case.check(done))
    else:  # a recorded reject: the command succeeds and says what it rejected
        clear = done.returncode == 0 and not traceback and bool(case.check and case.check(done))
    lost = [p for p, h in before.items() if h is not None and digest(Path(p)) != h]
    return {
        "case": case.name,
        "group": case.group,
        "expect": case.expect,
        "exit": done.returncode,
        "clear": clear,
        "traceback": traceback,
        "data_lost": len(lost),
        "message": (errors or stderr or [done.stdout.strip()[-160:]])[-1][:200],
        "seconds": round(seconds, 2),
    }


# --- inputs --------------------------------------------------------------------------------
def lfw_face_bytes() -> bytes:
    """One real LFW photo (a detectable face) for the image-folder cases."""
    sys.path.insert(0, str(REPO))
    from facefoundry.evaluation.lfw import Lfw, data_dir

    return Lfw(data_dir() / "lfw").read("Abel_Pacheco/Abel_Pacheco_0001.jpg")


def image_folder(root: Path) -> Path:
    folder = root / "images"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(lfw_face_bytes())
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("a non-image in the folder")
    # a PNG header claiming 60000 x 60000 pixels: a decompression bomb if decoded
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    )
    (folder / "huge.png").write_bytes(bomb + chunk(b"IEND", b""))
    return folder


def embed_rows(path: Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    if not path.is_file():
        return {}
    table = pq.read_table(path, columns=["key", "status"]).to_pylist()
    return {Path(r["key"]).name: r["status"] for r in table}


def shard_dir(root: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from facefoundry.shards import ShardSettings, finalize, write_split
    from tests.helpers.shards import synthetic_samples

    directory = root / "shards"
    settings = ShardSettings(maxcount=10, identities_per_block=100)
    write_split(synthetic_samples(range(6), 5, reject_every=0), directory, settings=settings)
    finalize(directory)
    return directory


def damaged_copy(source: Path, root: Path, name: str, damage: Callable[[Path], None]) -> Path:
    target = root / name
    shutil.copytree(source, target)
    damage(sorted(target.glob("train-*.tar"))[0])
    return target


def truncate(tar: Path) -> None:
    tar.write_bytes(tar.read_bytes()[:5000])


def tamper(tar: Path) -> None:
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF  # inside the first member's data
    tar.write_bytes(bytes(data))


def traversal(tar: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as out:
        info = tarfile.TarInfo("../../escape.jpg")
        payload = b"x" * 10
        info.size = len(payload)
        out.addfile(info, io.BytesIO(payload))
    tar.write_bytes(buffer.getvalue())


def nan_embed_folder(root: Path) -> Path:
    """An embed part whose embeddings are NaN (e.g. a broken external embedder)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(REPO))
    from facefoundry.faces.parts import META_PREFIX, fixed_list

    folder = root / "nan-run" / "embed"
    folder.mkdir(parents=True)
    n = 12
    vectors = np.full((n, 128), np.nan, dtype=np.float32)
    table = pa.table(
        {
            "key": [f"{i // 4:07d}_{i % 4:04d}" for i in range(n)],
            "identity": pa.array([i // 4 for i in range(n)], pa.int64()),
            "status": ["ok"] * n,
            "n_faces": pa.array([1] * n, pa.int32()),
            "det_score": pa.array([0.9] * n, pa.float32()),
            "embedding_sface": fixed_list(vectors),
            "embedding_dlib": fixed_list(vectors),
        }
    )
    from facefoundry.faces import get_embedder

    meta = {
        f"{META_PREFIX}{name}.checksum": get_embedder(name).checksum for name in ("sface", "dlib")
    }
    pq.write_table(table.replace_schema_metadata(meta), folder / "part-00000.parquet")
    return folder.parent


def nan_rejected(filter_dir: Path) -> bool:
    """Every NaN-embedded sample is a recorded ``bad_embedding`` reject, none kept."""
    import pyarrow.parquet as pq

    path = filter_dir / "decisions.parquet"
    if not path.is_file():
        return False
    rows = pq.read_table(path).to_pylist()
    return bool(rows) and all(not r["kept"] and r["reject_reason"] == "bad_embedding" for r in rows)


def recipe_file(root: Path, name: str, text: str | bytes) -> Path:
    path = root / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


def limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))


# --- the SIGKILL case ----------------------------------------------------------------------
KILL_RECIPE = """\
name: killed
seed: 0
identities: {count: 8, method: fitted, tau: 0.3}
generate: {model: %s, samples_per_identity: 4, steps: 6, guidance_scale: 3.0,
           batch_size: 8, chunk_identities: 2}
filter: {judge_embedder: dlib, min_samples: 2}
"""


def shard_digests(folder: Path) -> dict[str, str]:
    return {
        p.name: digest(p)
        for p in sorted(folder.glob("*"))
        if p.is_file() and p.suffix in (".tar", ".parquet") or p.name == "labels.json"
    }


def kill_and_rerun(root: Path, rng: random.Random) -> dict:
    """Run to the shards stage uninterrupted, then kill a second run at a random moment,
    rerun it, and compare the shards."""
    recipe = recipe_file(root, "kill.yaml", KILL_RECIPE % (REPO / "models" / "idiff-face-lfw"))
    argv = ["run", str(recipe), "--no-prefect", "--stop-after", "shards"]
    started = time.perf_counter()
    clean = subprocess.run(
        [*CLI, *argv, "--out", str(root / "clean")], capture_output=True, text=True, timeout=900
    )
    full = time.perf_counter() - started
    if clean.returncode != 0:
        return {
            "case": "sigkill-run-and-rerun",
            "clear": False,
            "traceback": "Traceback" in clean.stderr,
            "data_lost": 1,
            "message": clean.stderr.strip()[-200:],
        }
    delay = rng.uniform(0.2, 0.8) * full
    killed = subprocess.Popen(
        [*CLI, *argv, "--out", str(root / "killed")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(delay)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    generate = root / "killed" / "killed" / "generate"
    complete = {p.name: digest(p) for p in generate.glob("part-*.*")} if generate.is_dir() else {}
    complete = {
        n: h for n, h in complete.items() if (generate / n).with_suffix(".parquet").is_file()
    }
    rerun = subprocess.run(
        [*CLI, *argv, "--out", str(root / "killed")], capture_output=True, text=True, timeout=900
    )
    survived = all(digest(generate / n) == h for n, h in complete.items())
    same = shard_digests(root / "killed" / "killed" / "shards") == shard_digests(
        root / "clean" / "killed" / "shards"
    )
    return {
        "case": "sigkill-run-and-rerun",
        "group": "run",
        "expect": "resume",
        "exit": rerun.returncode,
        "clear": rerun.returncode == 0 and same,
        "traceback": "Traceback" in rerun.stderr,
        "data_lost": int(not (survived and same)),
        "message": f"killed after {delay:.0f} s of {full:.0f} s; {len(complete)} complete chunk files kept; shards equal: {same}",
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="skip the SIGKILL run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    mounts: list[Path] = []
    try:
        images = image_folder(root)
        shards = shard_dir(root)
        good_recipe = recipe_file(root, "good.yaml", "name: good\n")
        existing = root / "existing.parquet"
        subprocess.run(
            [*CLI, "identities", "--count", "3", "--out", str(existing)],
            check=True,
            capture_output=True,
        )
        readonly = root / "readonly"
        full = root / "full"
        can_mount = tmpfs(readonly, "ro,size=1m")
        if can_mount:
            mounts.append(readonly)
            if tmpfs(full, "size=64k"):
                mounts.append(full)
        out = root / "out"
        out.mkdir()
        embed_out = out / "embed.parquet"

        def rejects_named(*names):
            def check(done):
                rows = embed_rows(embed_out)
                return (
                    all(rows.get(n) not in (None, "ok") for n in names)
                    and rows.get("good.jpg") == "ok"
                )

            return check

        def problems_named(done):
            return "train-000000" in (done.stdout + done.stderr)

        cases = [
            # faces
            Case(
                "corrupt-empty-huge-images",
                "faces",
                ["faces", "embed", str(images), "--out", str(embed_out)],
                "reject",
                rejects_named("corrupt.jpg", "empty.jpg", "huge.png"),
            ),
            Case(
                "corrupt-tgz",
                "faces",
                [
                    "faces",
                    "embed",
                    str(recipe_file(root, "bad.tgz", b"\x1f\x8b" + b"\0" * 50)),
                    "--out",
                    str(out / "t.parquet"),
                ],
            ),
            Case(
                "missing-image-folder",
                "faces",
                ["faces", "embed", str(root / "nope"), "--out", str(out / "n.parquet")],
            ),
            Case(
                "unknown-embedder",
                "faces",
                [
                    "faces",
                    "embed",
                    str(images),
                    "--embedder",
                    "facenet9",
                    "--out",
                    str(out / "u.parquet"),
                ],
            ),
            Case(
                "missing-onnx-embedder",
                "faces",
                [
                    "faces",
                    "embed",
                    str(images),
                    "--embedder",
                    f"onnx:{root / 'no.onnx'}",
                    "--out",
                    str(out / "o.parquet"),
                ],
            ),
            # shards
            Case(
                "verify-truncated-shard",
                "shards",
                ["shards", "verify", str(damaged_copy(shards, root, "cut", truncate))],
                "problems",
                problems_named,
            ),
            Case(
                "verify-tampered-shard",
                "shards",
                ["shards", "verify", str(damaged_copy(shards, root, "tampered", tamper))],
                "problems",
                problems_named,
            ),
            Case(
                "verify-path-traversal",
                "shards",
                ["shards", "verify", str(damaged_copy(shards, root, "traversal", traversal))],
                "problems",
                problems_named,
            ),
            Case("stats-missing-folder", "shards", ["shards", "stats", str(root / "no-shards")]),
            Case(
                "verify-not-a-shard-folder",
                "shards",
                ["shards", "verify", str(images)],
                "problems",
                lambda done: "dataset.json" in done.stdout + done.stderr,
            ),
            # train
            Case(
                "train-truncated-shard",
                "train",
                [
                    "train",
                    str(damaged_copy(shards, root, "cut2", truncate)),
                    "--out",
                    str(out / "tr"),
                ],
            ),
            Case(
                "train-missing-shards",
                "train",
                ["train", str(root / "no-shards"), "--out", str(out / "tr2")],
            ),
            Case(
                "train-bad-set",
                "train",
                ["train", str(shards), "--out", str(out / "tr3"), "--set", "train.epochs=-1"],
            ),
            # filter
            Case(
                "filter-nan-embeddings",
                "filter",
                ["filter", str(nan_embed_folder(root)), "--out", str(out / "f")],
                "reject",
                lambda done: nan_rejected(out / "f"),
            ),
            Case(
                "filter-missing-embed-folder",
                "filter",
                ["filter", str(root / "no-embed"), "--out", str(out / "f2")],
            ),
            Case(
                "filter-bad-settings-key",
                "filter",
                [
                    "filter",
                    str(root / "nan-run"),
                    "--set",
                    "filter.min_sample=3",
                    "--out",
                    str(out / "f3"),
                ],
            ),
            # recipes
            Case(
                "recipe-unknown-key",
                "recipe",
                ["recipe", "check", str(recipe_file(root, "k.yaml", "generate:\n  stepz: 3\n"))],
            ),
            Case(
                "recipe-wrong-type",
                "recipe",
                ["recipe", "check", str(recipe_file(root, "t.yaml", "generate:\n  steps: many\n"))],
            ),
            Case(
                "recipe-unknown-family",
                "recipe",
                ["recipe", "check", str(recipe_file(root, "f.yaml", "generate:\n  family: gan\n"))],
            ),
            Case("recipe-is-a-folder", "recipe", ["recipe", "check", str(images)]),
            Case(
                "recipe-not-utf8",
                "recipe",
                ["recipe", "check", str(recipe_file(root, "b.yaml", b"name: \xff\xfe\x00bad\n"))],
            ),
            Case(
                "recipe-bad-yaml",
                "recipe",
                ["recipe", "check", str(recipe_file(root, "y.yaml", "generate: [unclosed\n"))],
            ),
            Case("recipe-missing", "recipe", ["recipe", "check", str(root / "none.yaml")]),
            Case(
                "recipe-bad-set",
                "recipe",
                ["recipe", "check", str(good_recipe), "--set", "generate.steps=abc"],
            ),
            # run / report
            Case(
                "run-missing-model-folder",
                "run",
                [
                    "run",
                    str(good_recipe),
                    "--no-prefect",
                    "--out",
                    str(out / "runs"),
                    "--set",
                    f"generate.model={root / 'no-model'}",
                ],
            ),
            Case(
                "run-bad-stop-after", "run", ["run", str(good_recipe), "--stop-after", "painting"]
            ),
            Case(
                "report-mistyped-run-folder",
                "run",
                ["report", str(out / "runs" / "goood")],
                check=None,
            ),
            # eval / generator / identities
            Case("eval-bin-missing-file", "eval", ["eval", "bin", str(root / "lfw.bin")]),
            Case(
                "eval-bin-corrupt-file",
                "eval",
                ["eval", "bin", str(recipe_file(root, "bad.bin", b"not a pickle"))],
            ),
            Case("eval-unknown-pairs", "eval", ["eval", "lfw", "--pairs", "view9"]),
            Case(
                "identities-zero-count",
                "generator",
                ["identities", "--count", "0", "--out", str(out / "i.parquet")],
            ),
            Case(
                "generator-missing-identities",
                "generator",
                [
                    "generator",
                    "sample",
                    str(REPO / "models" / "idiff-face-lfw"),
                    "--identities",
                    str(root / "none.parquet"),
                    "--out",
                    str(out / "g"),
                ],
            ),
            Case(
                "generator-missing-model",
                "generator",
                [
                    "generator",
                    "sample",
                    str(root / "no-model"),
                    "--identities",
                    str(existing),
                    "--out",
                    str(out / "g2"),
                ],
            ),
        ]
        if can_mount:
            cases.append(
                Case(
                    "read-only-output-folder",
                    "faces",
                    ["identities", "--count", "4", "--out", str(readonly / "ids.parquet")],
                )
            )
        else:
            cases.append(
                Case(
                    "output-under-a-file",
                    "faces",
                    ["identities", "--count", "4", "--out", str(existing / "ids.parquet")],
                )
            )
        if full in mounts:
            (full / "ids.parquet").write_bytes(existing.read_bytes())
            cases.append(
                Case(
                    "disk-full",
                    "generator",
                    [
                        "identities",
                        "--count",
                        "2000",
                        "--dim",
                        "512",
                        "--out",
                        str(full / "ids.parquet"),
                    ],
                    protect=[full / "ids.parquet"],
                )
            )
        else:
            cases.append(
                Case(
                    "disk-full-rlimit",
                    "generator",
                    ["identities", "--count", "2000", "--dim", "512", "--out", str(existing)],
                    protect=[existing],
                    preexec=limit_file_size,
                )
            )

        rows = []
        for case in cases:
            row = run_case(case)
            rows.append(row)
            print(
                f"{row['case']:32s} exit={row['exit']} clear={row['clear']!s:5} tb={row['traceback']!s:5} {row['message'][:90]}",
                file=sys.stderr,
            )
        if not args.quick:
            rows.append(kill_and_rerun(root, rng))
            print(json.dumps(rows[-1]), file=sys.stderr)
        # nothing created for a mistyped report folder
        report_row = next(r for r in rows if r["case"] == "report-mistyped-run-folder")
        if (out / "runs" / "goood").exists():
            report_row["clear"] = False
            report_row["message"] += " (and it created the folder)"
        result = {
            "benchmark": "bad_inputs",
            "cases": len(rows),
            "clear_errors": sum(r["clear"] for r in rows),
            "tracebacks": sum(r["traceback"] for r in rows),
            "data_lost": sum(r["data_lost"] for r in rows),
            "unclear": [r["case"] for r in rows if not r["clear"]],
            "groups": sorted({r["group"] for r in rows}),
            "rows": rows,
            "machine": machine(),
        }
        finish(result)
    finally:
        for mount in mounts:
            subprocess.run(["umount", str(mount)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
