"""Atomic writes and resume: a writer killed with SIGKILL, then re-run, gives the same bytes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facefoundry.shards import ResumeMismatchError, ShardSettings, write_split
from tests.helpers.shards import synthetic_samples

ROOT = Path(__file__).resolve().parents[1]
IDENTITIES = range(12)
PER_IDENTITY = 10
SETTINGS = dict(maxcount=15, identities_per_block=4, shards_per_block=10)

# The writer run in a subprocess. After handing over sample PAUSE_AT it touches a file and
# sleeps, so the test kills it at a known point: in the middle of a shard, with
# earlier shards complete.
PAUSE_AT = 62
WRITER = """
import sys, time
from pathlib import Path
from facefoundry.shards import ShardSettings, write_split
from tests.helpers.shards import synthetic_samples
directory, ready, settings = sys.argv[1], Path(sys.argv[2]), ShardSettings(**eval(sys.argv[3]))
pause_at = int(sys.argv[4])
def paused():
    for i, sample in enumerate(synthetic_samples(range(12), 10, reject_every=4)):
        yield sample
        if i == pause_at:
            ready.touch()
            time.sleep(600)
write_split(paused(), directory, settings=settings)
"""


def run_writer(directory: Path, ready: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), str(ready), repr(SETTINGS), str(PAUSE_AT)],
        env=env,
    )


def shard_hashes(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file() and p.suffix in (".tar", ".parquet", ".json")
    }


def test_kill_9_then_resume_gives_the_uninterrupted_bytes(tmp_path: Path) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    samples = synthetic_samples(IDENTITIES, PER_IDENTITY, reject_every=4)
    full = write_split(samples, reference, settings=ShardSettings(**SETTINGS))
    assert len(full.shards) >= 6

    ready = tmp_path / "ready"
    proc = run_writer(killed, ready)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, "writer exited before reaching the pause"
        assert time.monotonic() < deadline, "writer made no progress"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    complete = sorted(p.name for p in killed.glob("*_stats.json"))
    assert 2 <= len(complete) < len(full.shards), "the kill must land mid-way"
    partial = list(killed.glob("*.tmp-*"))
    assert partial, "a partial shard should be left as temporary files"
    for tmp in partial:  # ... and never under its final name
        assert not (killed / tmp.name.split(".tmp-")[0]).exists()
    for stats in complete:  # every shard that looks complete is complete
        stem = stats[: -len("_stats.json")]
        assert (killed / f"{stem}.tar").exists() and (killed / f"{stem}.parquet").exists()

    resumed = write_split(
        synthetic_samples(IDENTITIES, PER_IDENTITY, reject_every=4),
        killed,
        settings=ShardSettings(**SETTINGS),
    )
    assert len(resumed.skipped) == len(complete)
    assert not list(killed.glob("*.tmp-*"))
    assert shard_hashes(killed) == shard_hashes(reference)
    assert shard_hashes(killed / "_blocks") == shard_hashes(reference / "_blocks")


def test_partial_files_are_redone_and_complete_ones_kept(tmp_path: Path) -> None:
    settings = ShardSettings(**SETTINGS)
    samples = list(synthetic_samples(IDENTITIES, PER_IDENTITY, reject_every=4))
    first = write_split(samples, tmp_path, settings=settings)
    reference = shard_hashes(tmp_path)
    victim = first.shards[2]
    (tmp_path / f"{victim}_stats.json").unlink()  # a shard killed before its stats were written
    (tmp_path / f"{victim}.tar").write_bytes(b"partial")
    (tmp_path / f"{first.shards[3]}.tar.tmp-99999").write_bytes(b"junk")
    again = write_split(samples, tmp_path, settings=settings)
    assert again.written == (victim,)
    assert len(again.skipped) == len(first.shards) - 1
    assert shard_hashes(tmp_path) == reference
    assert not list(tmp_path.glob("*.tmp-*"))


def test_resume_refuses_other_settings_or_other_input(tmp_path: Path) -> None:
    samples = list(synthetic_samples(IDENTITIES, PER_IDENTITY, reject_every=4))
    write_split(samples, tmp_path, settings=ShardSettings(**SETTINGS))
    with pytest.raises(ResumeMismatchError, match="other layout settings"):
        write_split(samples, tmp_path, settings=ShardSettings(**{**SETTINGS, "maxcount": 7}))
    changed = list(synthetic_samples(IDENTITIES, PER_IDENTITY, reject_every=3))
    with pytest.raises(ResumeMismatchError, match="input differs"):
        write_split(changed, tmp_path, settings=ShardSettings(**SETTINGS))
    stats = json.loads((tmp_path / "train-000000_stats.json").read_text())
    assert stats["layout"]["maxcount"] == SETTINGS["maxcount"]


def test_resume_refuses_shards_of_the_older_format(tmp_path: Path) -> None:
    samples = list(synthetic_samples(IDENTITIES, PER_IDENTITY, reject_every=4))
    write_split(samples, tmp_path, settings=ShardSettings(**SETTINGS))
    path = tmp_path / "train-000000_stats.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 1}))
    with pytest.raises(ResumeMismatchError, match="format version 1"):
        write_split(samples, tmp_path, settings=ShardSettings(**SETTINGS))
