"""Real models on real LFW faces (fold 1 of View 2)."""

import numpy as np
import pytest

from facefoundry.evaluation.protocol import roc_auc
from facefoundry.evaluation.verify import embed_lfw_images, load_pairs, score_pairs

pytestmark = pytest.mark.lfw


@pytest.fixture(scope="module")
def fold1_subset(lfw):
    pairs = load_pairs(lfw, "view2", folds=[0])
    matched = [p for p in pairs if p.same][:30]
    mismatched = [p for p in pairs if not p.same][:30]
    return matched + mismatched


@pytest.mark.parametrize("embedder", ["sface", "dlib"])
def test_same_person_pairs_score_higher_than_different_people(lfw, fold1_subset, embedder):
    names = sorted({p.left for p in fold1_subset} | {p.right for p in fold1_subset})
    vectors, status = embed_lfw_images(
        lfw, names, embedder, workers=1, flip_tta=False, progress=False
    )
    assert sum(s == "ok" for s in status.values()) >= 0.95 * len(names)
    scores = score_pairs(vectors, fold1_subset)
    same = np.array([p.same for p in fold1_subset])
    genuine, impostor = scores[same], scores[~same]
    assert genuine.mean() > impostor.mean()
    assert roc_auc(scores, same) > 0.97  # dlib's cosines sit high (~0.8 impostor): rank-based
    # nearly every genuine pair beats the median impostor pair
    assert np.mean(genuine > np.median(impostor)) >= 0.95


def test_yunet_landmarks_follow_the_template_order(lfw):
    from facefoundry.faces import decode_image, get_detector, select_face

    name = "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    image = decode_image(lfw.read(name), name)
    face = select_face(get_detector("yunet").detect(image), image.shape)
    assert face is not None and face.score > 0.8
    left_eye, right_eye, nose, left_mouth, right_mouth = face.landmarks
    assert left_eye[0] < nose[0] < right_eye[0]
    assert left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])


def test_archive_reads_match_the_tarball(lfw_root, tmp_path, monkeypatch):
    import tarfile

    from facefoundry.evaluation.lfw import Lfw

    monkeypatch.setenv("FACEFOUNDRY_CACHE_DIR", str(tmp_path))
    archive = Lfw(lfw_root)
    if archive.folder.is_dir():
        pytest.skip("LFW is extracted here; the archive index is not used")
    name = "Zico/Zico_0002.jpg"
    with tarfile.open(lfw_root / "lfw-deepfunneled.tgz") as tar:
        expected = tar.extractfile(f"lfw-deepfunneled/{name}").read()
    assert archive.read(name) == expected
    assert len(archive.names()) == 13233
    assert any(tmp_path.rglob("index.json"))  # the index is cached outside the data folder
    with pytest.raises(KeyError, match="Nobody"):
        archive.read("Nobody/Nobody_0001.jpg")


def test_cli_eval_lfw_writes_the_documented_json(lfw_root, tmp_path):
    import json

    from facefoundry.flows.cli import main

    out = tmp_path / "devtest.json"
    code = main(
        [
            "eval",
            "lfw",
            "--embedder",
            "sface",
            "--pairs",
            "devtest",
            "--folds",
            "1",
            "--workers",
            "1",
            "--lfw",
            str(lfw_root),
            "--json",
            str(out),
            "-q",
        ]
    )
    assert code == 0
    figures = json.loads(out.read_text())
    for key in (
        "accuracy",
        "accuracy_std",
        "auc",
        "eer",
        "tar_at_far_1e-3",
        "pairs",
        "undetected",
        "embedder",
        "seconds",
    ):
        assert key in figures
    assert figures["pairs"] == 100 and figures["embedder"] == "sface"
    assert figures["accuracy"] > 0.9


def test_one_pass_over_two_pair_sets_scores_each_as_alone(lfw, tmp_path):
    """The evaluate stage embeds DevTest and View 2's shared images once: same figures."""
    from facefoundry.evaluation.verify import evaluate_lfw, evaluate_lfw_sets
    from tests.helpers.recognizers import export_tiny_recognizer

    path = tmp_path / "tiny.onnx"
    export_tiny_recognizer(path)
    spec, options = f"onnx:{path}", {"workers": 1, "flip_tta": False, "folds": [0]}
    shared = evaluate_lfw_sets(spec, ["devtest", "view2"], progress=False, **options)
    assert set(shared) == {"devtest", "view2"}
    for name in shared:
        alone = evaluate_lfw(spec, name, progress=False, **options)
        for key in ("accuracy", "auc", "eer", "pairs", "images", "undetected", "unusable"):
            assert shared[name][key] == alone[key], (name, key)
    assert shared["devtest"]["benchmark"] == "lfw-devtest"


def test_the_archive_cache_survives_a_new_mtime_but_not_new_content(tmp_path, monkeypatch):
    """A data folder provisioned again (same archive, new mtime) reuses the decompressed
    cache; an archive with other content gets its own."""
    import io
    import os
    import tarfile

    from facefoundry.evaluation.lfw import Lfw

    def write_archive(root, data: bytes) -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "pairs.txt").write_text("1\t1\n")
        with tarfile.open(root / "lfw-deepfunneled.tgz", "w:gz") as tar:
            info = tarfile.TarInfo("lfw-deepfunneled/A_B/A_B_0001.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    monkeypatch.setenv("FACEFOUNDRY_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "lfw"
    write_archive(root, b"first")
    assert Lfw(root).read("A_B/A_B_0001.jpg") == b"first"
    os.utime(root / "lfw-deepfunneled.tgz", (1e9, 1e9))  # provisioned again
    assert Lfw(root).read("A_B/A_B_0001.jpg") == b"first"
    assert len(list((tmp_path / "cache").rglob("index.json"))) == 1
    write_archive(root, b"second")
    assert Lfw(root).read("A_B/A_B_0001.jpg") == b"second"
    assert len(list((tmp_path / "cache").rglob("index.json"))) == 2
