"""The generation stage writes reproducible chunks the filter stage can read."""

import hashlib
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from facefoundry.flows.cli import main
from facefoundry.generators.idiff_face.model import IDiffFaceModel
from tests.helpers.generators import tiny_config


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    IDiffFaceModel(tiny_config()).save_pretrained(folder)
    return folder


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_identities_and_sample_are_reproducible_and_resumable(tiny_model_dir, tmp_path):
    ids = tmp_path / "identities.parquet"
    assert (
        main(
            [
                "identities",
                "--count",
                "5",
                "--dim",
                "12",
                "--method",
                "separated",
                "--tau",
                "0.6",
                "--out",
                str(ids),
            ]
        )
        == 0
    )
    args = [
        "generator",
        "sample",
        str(tiny_model_dir),
        "--identities",
        str(ids),
        "--per-identity",
        "3",
        "--steps",
        "4",
        "--chunk",
        "2",
        "--seed",
        "7",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    tars = sorted((tmp_path / "a").glob("part-*.tar"))
    assert [t.name for t in tars] == ["part-00000.tar", "part-00001.tar", "part-00002.tar"]
    for tar in tars:
        assert _sha(tar) == _sha(tmp_path / "b" / tar.name)
    rows = pq.read_table(tmp_path / "a" / "part-00000.parquet").to_pylist()
    assert [r["key"] for r in rows] == [
        "0000000_0000",
        "0000000_0001",
        "0000000_0002",
        "0000001_0000",
        "0000001_0001",
        "0000001_0002",
    ]
    with tarfile.open(tars[0]) as archive:
        names = archive.getnames()
        assert names[:2] == ["0000000_0000.jpg", "0000000_0000.json"]
        meta = json.loads(archive.extractfile("0000000_0001.json").read())
        assert meta["identity"] == 0 and meta["sample"] == 1 and meta["generator"] == "idiff_face"
    # a re-run skips complete chunks and redoes a missing one, with the same bytes
    before = _sha(tars[1])
    (tmp_path / "a" / "part-00001.parquet").unlink()
    tars[1].unlink()
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert _sha(tmp_path / "a" / "part-00001.tar") == before
    # --compile draws the same images up to float rounding (JPEG-encoded here)
    assert main([*args, "--compile", "--out", str(tmp_path / "c")]) == 0
    eager, compiled = _decoded(tars[0]), _decoded(tmp_path / "c" / tars[0].name)
    assert eager.keys() == compiled.keys()
    for key, image in eager.items():
        assert np.abs(image - compiled[key]).mean() < 0.5, key


def _decoded(tar_path):
    from PIL import Image

    with tarfile.open(tar_path) as archive:
        return {
            m.name: np.asarray(Image.open(archive.extractfile(m)), dtype=np.int16)
            for m in archive.getmembers()
            if m.name.endswith(".jpg")
        }


def test_identity_dimension_mismatch_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    ids = tmp_path / "identities.parquet"
    main(["identities", "--count", "2", "--dim", "128", "--method", "uniform", "--out", str(ids)])
    assert (
        main(
            [
                "generator",
                "sample",
                str(tiny_model_dir),
                "--identities",
                str(ids),
                "--out",
                str(tmp_path / "o"),
                "--steps",
                "2",
            ]
        )
        == 1
    )
    assert "128-d identities" in capsys.readouterr().err  # one line, no traceback


def test_an_inverted_guidance_interval_is_a_one_line_error_before_any_image(
    tiny_model_dir, tmp_path, capsys
):
    ids = tmp_path / "identities.parquet"
    main(["identities", "--count", "2", "--dim", "16", "--method", "uniform", "--out", str(ids)])
    out = tmp_path / "o"
    sample = ["generator", "sample", str(tiny_model_dir), "--identities", str(ids)]
    code = main([*sample, "--out", str(out), "--guidance", "3", "--guidance-interval", "900", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "guidance_interval (900, 0) is inverted" in err  # a usage error
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_out_of_memory_halves_the_batch_and_keeps_the_images(tiny_model_dir):
    import numpy as np

    from facefoundry.generators.idiff_face.generate import sample_with_backoff
    from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline
    from facefoundry.generators.idiff_face.settings import IDiffFaceSettings

    class SmallMemoryPipeline(IDiffFacePipeline):
        """Raises CUDA's out-of-memory error for batches above 2, like a small GPU."""

        batches: list[int] = []

        def __call__(self, *args, batch_size=64, **kwargs):
            self.batches.append(batch_size)
            if batch_size > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().__call__(*args, batch_size=batch_size, **kwargs)

    model = IDiffFaceModel.from_pretrained(tiny_model_dir)
    settings = IDiffFaceSettings(model=str(tiny_model_dir), steps=3, batch_size=8)
    vectors = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
    seeds = [11, 12, 13, 14, 15]
    small = SmallMemoryPipeline(model, "dpmsolver++", device="cpu")
    images = sample_with_backoff(small, vectors, seeds, settings)
    assert small.batches == [8, 4, 2]
    reference = IDiffFacePipeline(model, "dpmsolver++", device="cpu")
    for batch_size in (1, 8):  # on CPU the same bytes at any batch size
        assert np.array_equal(images, reference(vectors, seeds, steps=3, batch_size=batch_size))


def test_model_checksum_ignores_training_logs_but_not_weights(tmp_path):
    import shutil
    from pathlib import Path

    from facefoundry.generators.chunks import folder_checksum as model_checksum

    model = tmp_path / "model"
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "idiff-face-lfw", model)
    before = model_checksum(model)
    (model / "loss_history.json").write_text("[]")
    (model / "loss_history_continued_finetune.json").write_text("[]")  # a fine-tune's log
    (model / "samples.png").write_bytes(b"changed")
    assert model_checksum(model) == before
    weights = model / "id_conditioner.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    assert model_checksum(model) != before
