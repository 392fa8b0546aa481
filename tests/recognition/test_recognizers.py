import numpy as np
import pytest
import torch

from edgepipe.datasets import list_labelled_images, read_rgb
from edgepipe.errors import EdgepipeError
from edgepipe.recognition import Classifier, build_recognizer
from edgepipe.recognition.vgg import VGG16


@pytest.fixture(scope="module")
def batch(small_val_folder):
    items = list_labelled_images(small_val_folder)
    return np.stack([read_rgb(i.path) for i in items]), np.array([i.label for i in items])


def test_efficientnet_lite0_recognises_real_images(batch):
    images, labels = batch
    top1 = Classifier("efficientnet-lite0").top1(images)
    assert (top1 == labels).mean() >= 0.75  # 1000-way top-1 on easy Imagenette classes


def test_onnxruntime_and_torch_backends_agree(batch):
    images, _ = batch
    ort = Classifier("efficientnet-lite0", backend="onnxruntime").logits(images[:4])
    pt = Classifier("efficientnet-lite0", backend="torch").logits(images[:4])
    assert np.abs(ort - pt).max() < 1e-2
    assert (ort.argmax(1) == pt.argmax(1)).all()


def test_recognizer_is_frozen():
    model = build_recognizer("efficientnet-lite0")
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_vgg16_uses_torchvision_keys_and_loads_its_own_file(tmp_path):
    model = VGG16()
    keys = list(model.state_dict())
    assert keys[:2] == ["features.0.weight", "features.0.bias"]
    assert keys[-2:] == ["classifier.6.weight", "classifier.6.bias"]
    assert len(keys) == 32  # 13 conv + 3 linear layers, weight and bias each, as in torchvision
    path = tmp_path / "vgg16.pth"
    torch.save(model.state_dict(), path)
    loaded = build_recognizer("vgg16", path)
    assert torch.equal(loaded.features[0].weight, model.features[0].weight)


def test_recognizer_errors(tmp_path):
    with pytest.raises(EdgepipeError, match="--weights"):
        build_recognizer("vgg16")
    with pytest.raises(EdgepipeError, match="unknown recognizer"):
        build_recognizer("resnet-9000")
    with pytest.raises(EdgepipeError, match="not found"):
        build_recognizer("vgg16", tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(EdgepipeError, match="is not a vgg16 weight file"):
        build_recognizer("vgg16", wrong)
