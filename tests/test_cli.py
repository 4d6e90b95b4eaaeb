"""The command line: one clear line for every error a user can fix, --debug for the
traceback, no heavy import for light commands, and every command's --help."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from facefoundry.errors import FacefoundryError, UsageError
from facefoundry.flows.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo.yaml"


def one_error_line(capsys) -> str:
    """The single stderr line of a failed command (no traceback, nothing else)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("facefoundry: error: ")
    return lines[0]


def test_missing_generator_model_is_refused_before_the_run_starts(tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = ["run", str(DEMO), "--out", str(runs), "--set", "generate.model=/nope"]
    assert main([*argv, "--no-prefect"]) == 2
    line = one_error_line(capsys)
    assert "/nope does not exist" in line and "generate.model" in line
    assert main(argv) == 2  # under Prefect too: refused before a flow (and its server) starts
    assert "/nope does not exist" in one_error_line(capsys)
    assert not runs.exists()


def test_corrupt_or_missing_archive_for_faces_embed(tmp_path, capsys):
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"this is not a gzip file")
    out = tmp_path / "o.parquet"
    assert main(["faces", "embed", str(bad), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "bad.tgz cannot be read as an archive" in line
    truncated = tmp_path / "truncated.tgz"
    with tarfile.open(tmp_path / "full.tgz", "w:gz") as tar:
        tar.add(bad, arcname="face.jpg")
    truncated.write_bytes((tmp_path / "full.tgz").read_bytes()[:20])
    assert main(["faces", "embed", str(truncated), "--out", str(out)]) == 2
    assert "truncated.tgz cannot be read as an archive" in one_error_line(capsys)
    assert main(["faces", "embed", str(tmp_path / "none.tgz"), "--out", str(out)]) == 2
    assert "none.tgz does not exist" in one_error_line(capsys)
    assert not out.exists()


def test_recipe_check_on_a_folder_or_non_utf8_file(tmp_path, capsys):
    assert main(["recipe", "check", str(DEMO.parent)]) == 2
    line = one_error_line(capsys)
    assert "recipe" in line and "is a folder" in line and "e.g." in line
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert main(["recipe", "check", str(latin)]) == 2
    line = one_error_line(capsys)
    assert "latin1.yaml is not UTF-8" in line and "0xe9" in line
    assert main(["recipe", "check", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in one_error_line(capsys)


def test_shards_stats_and_verify_on_a_missing_folder(tmp_path, capsys):
    for action in ("stats", "verify"):
        assert main(["shards", action, str(tmp_path / "nope")]) == 2
        assert "shard directory" in (line := one_error_line(capsys)) and "does not exist" in line
    (tmp_path / "photos").mkdir()  # a folder without shards: verify lists the problems
    assert main(["shards", "verify", str(tmp_path / "photos")]) == 1
    assert "dataset.json: missing" in capsys.readouterr().out


def test_eval_bin_on_a_missing_or_corrupt_file(tmp_path, capsys):
    assert main(["eval", "bin", str(tmp_path / "lfw.bin")]) == 2
    assert "lfw.bin does not exist" in one_error_line(capsys)
    (tmp_path / "notes.bin").write_text("not a pickle")
    assert main(["eval", "bin", str(tmp_path / "notes.bin")]) == 2
    assert "notes.bin is not an insightface .bin" in one_error_line(capsys)


def test_unknown_or_missing_models_fail_before_workers_start(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"not a jpeg")
    out = str(tmp_path / "o.parquet")
    assert main(["faces", "embed", str(images), "--out", out, "--embedder", "facenet9"]) == 2
    assert "--embedder facenet9: unknown embedder" in one_error_line(capsys)
    missing = f"onnx:{tmp_path / 'none.onnx'}"
    assert main(["faces", "embed", str(images), "--out", out, "--embedder", missing]) == 2
    assert "none.onnx does not exist" in one_error_line(capsys)
    assert main(["faces", "embed", str(images), "--out", out, "--detector", "retina"]) == 2
    assert "--detector retina: unknown detector" in one_error_line(capsys)


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as done:
        main(["run", str(DEMO), "--stop-after", "painting"])
    assert done.value.code == 2
    line = one_error_line(capsys)
    assert "run: argument --stop-after: invalid choice: 'painting'" in line
    assert "facefoundry run --help" in line
    with pytest.raises(SystemExit) as done:
        main(["identities", "--count", "0", "--out", "x.parquet"])
    assert done.value.code == 2 and "--count: 0 is not positive" in one_error_line(capsys)


def test_train_checks_the_shard_folder_before_any_work(tmp_path, capsys):
    out = tmp_path / "train"
    assert main(["train", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "shard directory" in (line := one_error_line(capsys)) and "does not exist" in line
    (tmp_path / "unfinished").mkdir()
    assert main(["train", str(tmp_path / "unfinished"), "--out", str(out)]) == 2
    assert "no dataset.json" in one_error_line(capsys)
    assert not out.exists()


def test_report_refuses_a_folder_without_a_run_and_creates_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "demo").mkdir(parents=True)
    (runs / "demo" / "recipe.resolved.yaml").write_text("name: demo\n")
    assert main(["report", str(runs / "dmeo")]) == 2
    line = one_error_line(capsys)
    assert "dmeo does not exist" in line and "did you mean" in line and "demo" in line
    assert not (runs / "dmeo").exists()
    (runs / "empty").mkdir()
    assert main(["report", str(runs / "empty")]) == 2
    assert "has no run in it" in one_error_line(capsys)
    assert list((runs / "empty").iterdir()) == []
    assert main(["stage", "embed", str(runs / "dmeo")]) == 2
    assert "did you mean" in one_error_line(capsys)


def test_debug_prints_the_traceback_anywhere_on_the_line(capsys):
    for argv in (
        ["--debug", "recipe", "check", str(DEMO.parent)],
        ["recipe", "check", str(DEMO.parent), "--debug"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and "UsageError" in err and "is a folder" in err


def test_an_unexpected_error_is_one_line_with_a_hint_and_exit_1(monkeypatch, capsys):
    from facefoundry.flows.cli import recipe

    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(recipe, "cmd_recipe_check", broken)
    assert main(["recipe", "check", str(DEMO)]) == 1
    line = one_error_line(capsys)
    assert "RuntimeError: boom" in line and "--debug" in line

    def broken_lines(args):
        raise KeyError("no column\nembedding_dlib")

    monkeypatch.setattr(recipe, "cmd_recipe_check", broken_lines)
    assert main(["recipe", "check", str(DEMO)]) == 1
    assert "KeyError: no column embedding_dlib (" in one_error_line(capsys)
    assert main(["recipe", "check", str(DEMO), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_multi_line_message_keeps_its_lines(monkeypatch, capsys):
    from facefoundry.flows.cli import recipe

    def two_problems(args):
        raise FacefoundryError("2 problems:\n  first\n  second")

    monkeypatch.setattr(recipe, "cmd_recipe_check", two_problems)
    assert main(["recipe", "check"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["facefoundry: error: 2 problems:", "  first", "  second"]


def _tiny_embed_run(root: Path) -> Path:
    from tests.helpers.filters import identity_samples, random_unit, write_embed_part

    sface, groups = identity_samples(random_unit(6, 64, seed=1), 4, 0.02, seed=2)
    dlib, _ = identity_samples(random_unit(6, 64, seed=3), 4, 0.02, seed=4)
    keys = [f"id{g:03d}-{i % 4}" for i, g in enumerate(groups)]
    write_embed_part(
        root / "embed" / "part-00000.parquet", keys, groups, {"sface": sface, "dlib": dlib}
    )
    return root


def test_filter_settings_come_from_a_recipe_filter_section(tmp_path, capsys):
    import pyarrow.parquet as pq
    import yaml

    run = _tiny_embed_run(tmp_path / "run")
    assert main(["filter", str(run), "--settings", str(DEMO), "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(run / "filter")
    kept = pq.read_table(run / "filter" / "decisions.parquet").column("kept").to_pylist()
    assert len(kept) == 24 and any(kept)
    # the recipe's filter: section is what decides: min_samples 5 > 4 samples each
    recipe = yaml.safe_load(DEMO.read_text())
    recipe["filter"]["min_samples"] = 5
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "strict"
    assert main(["filter", str(run), "--settings", str(strict), "--out", str(out), "-q"]) == 0
    rows = pq.read_table(out / "decisions.parquet").to_pylist()
    assert {r["reject_reason"] for r in rows} == {"too_few_samples"}
    # --set addresses the section's keys; a bad value names the recipe and the key
    argv = ["filter", str(run), "--settings", str(DEMO), "--out", str(out), "-q"]
    assert main([*argv, "--set", "min_samples=many"]) == 2
    assert "'filter.min_samples'" in one_error_line(capsys)
    assert main([*argv, "--set", "filter.min_sample=3"]) == 2  # the recipe's spelling works
    assert "unknown key 'filter.min_sample'" in one_error_line(capsys)


def test_filter_settings_alone_still_work(tmp_path, capsys):
    run = _tiny_embed_run(tmp_path / "run")
    settings = tmp_path / "settings.yaml"
    settings.write_text("min_samples: 5\ntau_inter: 0.5\n")
    out = tmp_path / "out"
    assert main(["filter", str(run), "--settings", str(settings), "--out", str(out), "-q"]) == 0
    document = json.loads((out / "metrics.json").read_text())
    assert document["funnel"]["samples"]["kept"] == 0


def test_recipe_check_imports_neither_torch_nor_opencv():
    """Light commands stay light: the CLI's own modules import nothing heavy. (This also
    fails when flows/config.py, which recipe check imports, pulls in torch or cv2.)"""
    code = (
        "import json, sys\n"
        "from facefoundry.flows.cli import main\n"
        f"assert main(['recipe', 'check', {str(DEMO)!r}]) == 0\n"
        "print(json.dumps(sorted(m for m in ('torch', 'cv2') if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_python_m_runs_the_cli_and_reports_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "facefoundry.flows.cli", "shards", "stats", "/nonexistent/x"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "facefoundry: error: shard directory /nonexistent/x does not exist: give a shard "
        "directory (a run's shards/ folder, or `facefoundry lfw-shards --out`)"
    ]


def _parsers(parser: argparse.ArgumentParser, prog: str = "facefoundry"):
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prog} {name}")


def test_every_command_has_help_and_the_global_flags():
    parsers = dict(_parsers(build_parser()))
    expected = {
        "eval lfw", "eval bin", "faces embed", "data lfw", "recipe check", "run", "stage",
        "report", "identities", "generator prepare-lfw", "generator train",
        "generator sample", "generator init-multi-id", "generator train-multi-id",
        "generator tiny-sd", "generator reward-tune", "train", "lfw-shards", "filter", "metrics", "calibrate",
        "shards verify", "shards stats",
    }  # fmt: skip
    assert {f"facefoundry {c}" for c in expected} <= set(parsers)
    for prog, parser in parsers.items():
        text = parser.format_help()
        assert text.startswith(f"usage: {prog}") and "--debug" in text, prog


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--identities", "1"],
            "reward-tune: identities: Input should be greater than or equal to 2",
        ),
        (["--lr", "0"], "reward-tune: learning_rate: Input should be greater than 0"),
    ],
)
def test_reward_tune_refuses_bad_settings_in_one_line_writing_nothing(
    tmp_path, capsys, flags, message
):
    data = tmp_path / "train.npz"
    data.write_bytes(b"not read: the settings are refused first")
    argv = ["generator", "reward-tune", str(data), "--init-from", str(tmp_path)]
    assert main([*argv, "--out", str(tmp_path / "o"), *flags]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_user_facing_errors_share_one_base_and_keep_their_builtin_base():
    from facefoundry.evaluation.lfw import LfwNotFoundError
    from facefoundry.evaluation.lfw_download import OfflineError
    from facefoundry.faces.io import FaceImageError
    from facefoundry.faces.models import ModelFileError
    from facefoundry.filters.calibrate import CalibrationError
    from facefoundry.flows.config import RecipeError
    from facefoundry.shards.errors import DamagedShardError, EmptyDatasetError, ShardError

    usage = {
        RecipeError: ValueError,
        FaceImageError: ValueError,
        CalibrationError: ValueError,
        LfwNotFoundError: FileNotFoundError,
    }
    for cls, builtin in usage.items():
        assert issubclass(cls, UsageError) and issubclass(cls, builtin), cls
    for cls in (ShardError, DamagedShardError, EmptyDatasetError, OfflineError, ModelFileError):
        assert issubclass(cls, FacefoundryError) and not issubclass(cls, UsageError), cls
    assert issubclass(EmptyDatasetError, ValueError) and issubclass(OfflineError, RuntimeError)
    assert LfwNotFoundError("x").exit_code == 2 and ShardError("x").exit_code == 1


def test_run_without_lfw_stops_before_any_stage(tmp_path, monkeypatch, capsys):
    """The demo evaluates on LFW: with no LFW the run refuses at once, creating nothing."""
    monkeypatch.setenv("FACEFOUNDRY_DATA_DIR", str(tmp_path / "no-data"))
    code = main(["run", "recipes/demo.yaml", "--no-prefect", "--out", str(tmp_path / "runs")])
    assert code == 2
    assert "LFW not found" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--grow-attention", "1"], "--grow-attention adds attention to a trained model"),
        (["--grow-depth", "1"], "--grow-depth adds blocks to a trained model"),
        (["--grow-depth", "-1", "--init-from", "."], "--grow-depth is a number of blocks"),
        (["--grow-width", "1"], "--grow-width widens a trained model"),
        (["--grow-width", "-1", "--init-from", "."], "--grow-width is a number of doublings"),
        (["--grow-modulation"], "--grow-modulation converts a trained model"),
        (["--min-snr-gamma", "-1"], "--min-snr-gamma is 0 (off) or more"),
        (["--cpd-p", "1"], "--cpd-p is a dropout rate in [0, 1)"),
        (["--schedule-to-budget"], "--schedule-to-budget fits the schedule to a time budget"),
    ],
)
def test_train_refuses_inconsistent_flags_before_reading_or_writing(
    tmp_path, capsys, flags, message
):
    data = tmp_path / "train.npz"
    data.write_bytes(b"not read: the flags are refused first")
    argv = ["generator", "train", str(data), "--out", str(tmp_path / "o"), *flags]
    assert main(argv) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "o").exists()
