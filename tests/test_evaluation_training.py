"""Recognition training: margin losses by hand, real training steps on real LFW faces."""

import json
import math

import numpy as np
import pytest
import torch

from facefoundry.recognition.backbones import get_model
from facefoundry.recognition.export import export_onnx, load_backbone, onnx_parity
from facefoundry.recognition.losses import AdaFaceLoss, MarginHead, arcface, cosface
from facefoundry.recognition.train import FRTrainSettings, RecognizerTrainer, TrainingDataError

PEOPLE = ["George_W_Bush", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld"]


def test_arcface_and_cosface_equal_a_hand_computation():
    cosine = torch.tensor([[0.8, 0.1, -0.2], [0.3, 0.5, 0.0]])
    labels = torch.tensor([0, 1])
    s = 10.0
    # ArcFace: target logit cos(acos(c) + 0.5)
    t0, t1 = math.cos(math.acos(0.8) + 0.5), math.cos(math.acos(0.5) + 0.5)
    rows = [[t0, 0.1, -0.2], [0.3, t1, 0.0]]
    expected = np.mean(
        [
            -s * rows[0][0] + math.log(sum(math.exp(s * v) for v in rows[0])),
            -s * rows[1][1] + math.log(sum(math.exp(s * v) for v in rows[1])),
        ]
    )
    assert float(arcface(s, 0.5)(cosine, labels)) == pytest.approx(expected, rel=1e-5)
    rows = [[0.8 - 0.35, 0.1, -0.2], [0.3, 0.5 - 0.35, 0.0]]
    expected = np.mean(
        [
            -s * rows[0][0] + math.log(sum(math.exp(s * v) for v in rows[0])),
            -s * rows[1][1] + math.log(sum(math.exp(s * v) for v in rows[1])),
        ]
    )
    assert float(cosface(s, 0.35)(cosine, labels)) == pytest.approx(expected, rel=1e-5)


def test_adaface_equals_a_hand_computation():
    loss = AdaFaceLoss(s=10.0, m=0.4, h=0.333).eval()  # eval: use the stored statistics
    loss.batch_mean.fill_(20.0)
    loss.batch_std.fill_(10.0)
    cosine = torch.tensor([[0.6, 0.2]])
    norms = torch.tensor([[25.0]])
    z = max(-1.0, min(1.0, 0.333 * (25.0 - 20.0) / (10.0 + 1e-3)))
    theta = math.acos(0.6) - 0.4 * z
    target = math.cos(theta) - (0.4 + 0.4 * z)
    expected = -10 * target + math.log(math.exp(10 * target) + math.exp(10 * 0.2))
    assert float(loss(cosine, torch.tensor([0]), norms)) == pytest.approx(expected, rel=1e-5)


def test_partial_fc_keeps_positives_and_samples_negatives():
    torch.manual_seed(0)
    head = MarginHead(100, 8, cosface(), sample_rate=0.1).train()
    labels = torch.tensor([3, 3, 57, 99])
    chosen, remapped = head._partial(labels)
    assert len(chosen) == 10 and {3, 57, 99} <= set(chosen.tolist())
    assert torch.equal(chosen[remapped], labels)
    # the training loss is the margin loss over the sampled centres only (same draw)
    embeddings = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    loss = head(embeddings, labels)
    torch.manual_seed(2)
    chosen, remapped = head._partial(labels)
    cosine = torch.nn.functional.linear(
        torch.nn.functional.normalize(embeddings, dim=1),
        torch.nn.functional.normalize(head.weight[chosen], dim=1),
    ).clamp(-1, 1)
    expected = head.loss(cosine, remapped, embeddings.norm(dim=1, keepdim=True))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    full = head.eval()(embeddings, labels)  # eval: all 100 centres, a different softmax
    assert full.item() != pytest.approx(loss.item(), rel=1e-3)


def test_iresnet_state_dict_matches_arcface_torch_keys():
    # Key names and shapes of insightface arcface_torch's iresnet18 (num_features=512).
    state = get_model("r18").state_dict()
    expected_shapes = {
        "conv1.weight": (64, 3, 3, 3),
        "prelu.weight": (64,),
        "layer1.0.bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.0.downsample.0.weight": (64, 64, 1, 1),
        "layer1.0.downsample.1.num_batches_tracked": (),
        "layer2.1.conv2.weight": (128, 128, 3, 3),
        "layer4.1.bn3.bias": (512,),
        "bn2.weight": (512,),
        "fc.weight": (512, 512 * 7 * 7),
        "features.running_mean": (512,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    # stem conv1 + bn1 (5 tensors) + prelu = 7; each IBasicBlock: bn1, bn2, bn3 (5 each)
    # + conv1, conv2, prelu = 18; 4 downsamples (conv + bn) = 6 each; bn2 + fc (2) +
    # features (5) = 12.
    assert len(state) == 7 + 8 * 18 + 4 * 6 + 12
    assert not any(k.startswith(("body.", "module.")) for k in state)


def test_arcface_torch_style_checkpoint_loads_strictly(tmp_path):
    torch.manual_seed(0)
    source = get_model("r18", num_features=512)
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)  # how arcface_torch saves backbone.pth
    loaded = load_backbone(path, "r18")
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(loaded(x), source.eval()(x), atol=1e-5)
    bad = {k: v for k, v in source.state_dict().items() if k != "fc.bias"}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="fc.bias"):
        load_backbone(tmp_path / "bad.pth", "r18")


def test_onnx_export_parity_and_insightface_loads_it(tmp_path):
    torch.manual_seed(0)
    backbone = get_model("mbf_small", num_features=128).eval()
    path = export_onnx(backbone, tmp_path / "model.onnx")
    faces = np.random.default_rng(0).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    assert onnx_parity(backbone, path, faces) > 0.999
    from insightface.model_zoo import get_model as insightface_model

    model = insightface_model(str(path), providers=["CPUExecutionProvider"])
    assert model.taskname == "recognition"
    from facefoundry.faces import get_embedder

    ours = get_embedder(f"onnx:{path}").embed_aligned(faces)
    bgr = [np.ascontiguousarray(f[:, :, ::-1]) for f in faces]
    theirs = model.get_feat(bgr)
    theirs = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    assert np.min(np.sum(ours * theirs, axis=1)) > 0.999


@pytest.fixture(scope="module")
def lfw_shards(lfw, tmp_path_factory):
    from facefoundry.evaluation.lfw import image_name
    from facefoundry.faces import process_images
    from facefoundry.faces.detect import get_detector
    from facefoundry.faces.embedders import get_embedder
    from facefoundry.shards import ShardSample, encode_face_jpeg, finalize, make_key, write_split

    items, identities = [], []
    for identity, person in enumerate(PEOPLE):
        for number in range(1, 9):
            name = image_name(person, number)
            items.append((name, lfw.read(name)))
            identities.append(identity)
    result = process_images(
        items, get_detector("yunet"), get_embedder("sface"), no_face="centre", keep_aligned=112
    )
    directory = tmp_path_factory.mktemp("lfw-shards")
    samples = []
    counters = {}
    for identity, face in zip(identities, result.aligned, strict=True):
        index = counters.get(identity, 0)
        counters[identity] = index + 1
        samples.append(
            ShardSample(
                key=make_key(identity, index),
                identity=identity,
                kept=True,
                face_jpeg=encode_face_jpeg(face),
                generator="lfw",
            )
        )
    write_split(samples, directory)
    finalize(directory)
    return directory


def small_settings(**overrides) -> FRTrainSettings:
    values = dict(
        backbone="mbf_small",
        embedding_dim=64,
        loss="cosface",
        scale=16.0,
        batch_size=8,
        epochs=3,
        warmup_epochs=0.0,
        learning_rate=0.05,
        loader_workers=0,
        val_pairs=None,
        hflip=False,
    )
    values.update(overrides)
    return FRTrainSettings(**values)


def test_a_few_steps_on_four_real_identities_lower_the_loss(lfw_shards, tmp_path):
    trainer = RecognizerTrainer(lfw_shards, tmp_path, small_settings())
    assert trainer.num_classes == 4
    batches = list(trainer.batches(0))
    images, labels = batches[0]
    assert images.shape == (8, 3, 112, 112) and images.min() >= -1 and images.max() <= 1

    def loss() -> float:
        # batch statistics: after 24 steps BatchNorm's running averages (momentum 0.1)
        # still carry their initial values, so an eval-mode loss here measured the CPU's
        # rounding path (it rose on an Intel AVX-512 machine while training worked)
        trainer.backbone.train()
        trainer.head.eval()
        with torch.no_grad():
            return float(trainer.head(trainer.backbone(images), labels))

    before = loss()
    for _ in range(6):
        for x, y in batches:
            trainer.train_step(x, y)
    assert loss() < 0.3 * before  # measured: 6.74 -> 0.68


def test_resume_gives_an_identical_next_step(lfw_shards, tmp_path):
    settings = small_settings(epochs=2, randaugment=(2, 9), hflip=True)
    torch.manual_seed(0)
    first = RecognizerTrainer(lfw_shards, tmp_path, settings)
    for x, y in first.batches(0):
        first.train_step(x, y)
    first.epoch = 1
    first.save_checkpoint()
    x, y = next(iter(first.batches(1)))
    expected = first.train_step(x, y)

    torch.manual_seed(99)
    second = RecognizerTrainer(lfw_shards, tmp_path, settings)
    assert second.load_checkpoint() and second.epoch == 1
    x2, y2 = next(iter(second.batches(1)))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert second.train_step(x2, y2) == pytest.approx(expected, abs=1e-6)
    assert (tmp_path / "backbone.safetensors").is_file()


def test_non_contiguous_labels_are_refused(lfw_shards, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(lfw_shards, broken)
    dataset = json.loads((broken / "dataset.json").read_text())
    dataset["class_count"] = 7  # claims classes that no sample carries
    (broken / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(TrainingDataError, match="not contiguous"):
        RecognizerTrainer(broken, tmp_path / "out", small_settings())


def test_validation_callbacks_score_bin_sets_during_training(lfw_shards, tmp_path):
    import cv2

    from facefoundry.evaluation.aligned_pairs import bin_validator
    from facefoundry.evaluation.binset import write_bin

    rng = np.random.default_rng(0)
    encoded, issame = [], []
    for index in range(20):
        a = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        b = a if index % 2 == 0 else rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        encoded += [cv2.imencode(".png", a)[1].tobytes(), cv2.imencode(".png", b)[1].tobytes()]
        issame.append(index % 2 == 0)
    path = write_bin(tmp_path / "toy.bin", encoded, issame)
    validate = bin_validator(path)

    class ContentHashEmbedder:  # same image -> same vector, other images -> random ones
        def embed(self, faces, flip_tta=True):
            rows = [
                np.random.default_rng(abs(hash(f.tobytes())) % 2**32).standard_normal(64)
                for f in faces
            ]
            return np.stack([r / np.linalg.norm(r) for r in rows])

    class ConstantEmbedder:  # every face the same vector: chance on balanced pairs
        def embed(self, faces, flip_tta=True):
            return np.tile(np.eye(1, 64), (len(faces), 1))

    assert validate(ContentHashEmbedder())["val_toy_accuracy"] == pytest.approx(1.0)
    assert validate(ConstantEmbedder())["val_toy_accuracy"] == pytest.approx(0.5)
    calls = []

    def recording(trainer):  # the callback sees the trainer after each epoch's steps
        calls.append((trainer.epoch, trainer.step))
        return validate(trainer)

    trainer = RecognizerTrainer(
        lfw_shards, tmp_path / "out", small_settings(epochs=2), validator=recording
    )
    history = trainer.fit(progress=False)["history"]
    assert calls == [(h["epoch"], h["step"]) for h in history] and len(calls) == 2
    assert calls[0][1] > 0 and calls[1][1] > calls[0][1]  # scored during training, twice
    # the figure recorded is the trained model's own score, not a stale or default one
    assert history[-1]["val_toy_accuracy"] == validate(trainer)["val_toy_accuracy"]
    assert "val_toy_accuracy_std" in history[-1]
    assert (tmp_path / "out" / "checkpoint" / "state.json").is_file()


def test_a_dataset_smaller_than_a_batch_still_trains(lfw_shards, tmp_path):
    trainer = RecognizerTrainer(lfw_shards, tmp_path, small_settings(batch_size=512, epochs=1))
    assert trainer.batch_size == 32  # the 32 faces of the fixture
    start = {k: v.detach().clone() for k, v in trainer.backbone.state_dict().items()}
    history = trainer.fit(progress=False)["history"]
    assert history[-1]["step"] == 1
    # a real margin loss (cosface, s=16: about s * m + log(C - 1) at random weights)
    assert math.isfinite(history[-1]["loss"]) and 1.0 < history[-1]["loss"] < 20.0
    moved = [k for k, v in trainer.backbone.state_dict().items() if not torch.equal(v, start[k])]
    assert any(k.endswith("weight") for k in moved)  # the one step updated the backbone
