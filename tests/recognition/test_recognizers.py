import numpy as np
import pytest
import torch

from edgepipe.core.datasets import list_labelled_images, read_rgb
from edgepipe.core.errors import EdgepipeError
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


def test_efficientnet_lite0_logits_split_over_its_last_feature_map(batch):
    """The class activation map the saliency oracle reads: the linear layer applied at each cell of `features`
    averages to the logits."""
    model = build_recognizer("efficientnet-lite0")
    x = torch.from_numpy(batch[0][:4]).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        feats = model.features(x)
        per_cell = torch.einsum("kc,nchw->nkhw", model._fc.weight, feats) + model._fc.bias[None, :, None, None]
        logits = model(x)
    assert feats.shape == (4, 1280, 7, 7)
    torch.testing.assert_close(per_cell.mean(dim=(2, 3)), logits, atol=1e-4, rtol=1e-4)


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


def test_views_see_what_the_recognizer_was_trained_on(batch):
    """centre-crop feeds 224x224 whatever the frame size; on 224 frames every view is the native one."""
    import cv2

    from edgepipe.recognition import centre_crop, square_tiles

    images, labels = batch
    native = Classifier("efficientnet-lite0").logits(images[:4])
    for view in ("centre-crop", "tiles"):
        np.testing.assert_allclose(Classifier("efficientnet-lite0", view=view).logits(images[:4]), native, atol=1e-5)

    # A 720p-like frame: the photo upscaled into the middle of a wide grey canvas. Natively the recognizer
    # sees mostly grey at the wrong scale; the centre crop is the photo at (almost) its own scale.
    wide = np.full((len(images), 448, 1344, 3), 128, np.uint8)
    for i, image in enumerate(images):
        wide[i, :, 448:896] = cv2.resize(image, (448, 448), interpolation=cv2.INTER_LINEAR)
    crops = np.stack([centre_crop(f, 224) for f in wide])
    assert crops.shape == (len(images), 224, 224, 3)
    assert np.abs(crops.astype(int) - images.astype(int)).mean() < 8  # back at 224 with an area filter
    crop_top1 = Classifier("efficientnet-lite0", view="centre-crop").top1(wide)
    assert (crop_top1 == labels).mean() >= 0.75

    tiles = square_tiles(wide[0], 224)
    assert tiles.shape == (3, 224, 224, 3)  # 1344 / 448 = 3 squares across
    np.testing.assert_array_equal(tiles[1], crops[0])


def test_unknown_view_is_one_line():
    with pytest.raises(EdgepipeError, match="unknown recognizer view"):
        Classifier("efficientnet-lite0", view="zoom")


def test_topk_is_sorted_agrees_with_top1_and_gives_softmax_probabilities(batch):
    images, labels = batch
    classifier = Classifier("efficientnet-lite0")
    logits = classifier.logits(images)
    top = classifier.topk(images, 5)
    assert top.classes.shape == top.probs.shape == (len(images), 5)
    np.testing.assert_array_equal(top.top1, logits.argmax(1))
    assert (np.diff(top.probs, axis=1) <= 0).all()  # most probable first
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(top.probs, np.take_along_axis(p, top.classes, 1), rtol=1e-5, atol=1e-7)
    assert (top.probs.sum(1) <= 1 + 1e-6).all() and (top.probs[:, 0] > 0.3).mean() >= 0.75  # confident, mostly
    assert (top.classes == labels[:, None]).any(1).mean() >= (top.top1 == labels).mean()  # top-5 >= top-1


def test_top_k_breaks_ties_as_argmax_does():
    from edgepipe.recognition import top_k

    logits = np.zeros((2, 10), np.float32)
    logits[0, [3, 7]] = 1.0  # a tie: argmax says 3
    top = top_k(logits, 3)
    assert top.classes[0].tolist() == [3, 7, 0] and top.classes[1].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(top.top1, logits.argmax(1))
    assert top_k(logits, 50).classes.shape == (2, 10)  # k is at most the number of classes


def test_prepare_is_the_per_frame_part_of_the_view(batch):
    """Prepared frames of any size batch together under centre-crop and give the logits of the frames."""
    import cv2

    images, _ = batch
    wide = cv2.resize(images[0], (400, 224), interpolation=cv2.INTER_LINEAR)
    tall = cv2.resize(images[1], (224, 300), interpolation=cv2.INTER_LINEAR)
    crop = Classifier("efficientnet-lite0", view="centre-crop")
    prepared = np.stack([crop.prepare(wide), crop.prepare(tall)])
    assert prepared.shape == (2, 224, 224, 3)
    np.testing.assert_allclose(crop.logits(prepared)[0], crop.logits(wide[None])[0], atol=1e-5)
    np.testing.assert_allclose(crop.logits(prepared)[1], crop.logits(tall[None])[0], atol=1e-5)
    native = Classifier("efficientnet-lite0", view="native")
    assert native.prepare(wide) is wide  # nothing to do per frame: frames batch by size


# --- the registry -------------------------------------------------------------------------------------------

def test_the_registry_lists_the_recognizers_every_command_offers():
    from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZER_REGISTRY, RECOGNIZERS

    assert RECOGNIZER_REGISTRY.names() == RECOGNIZERS == ("efficientnet-lite0", "vgg16")
    assert DEFAULT_RECOGNIZER in RECOGNIZER_REGISTRY
    assert RECOGNIZER_REGISTRY["vgg16"].packaged_weights is None  # its weights are the user's to give
    with pytest.raises(EdgepipeError) as err:
        build_recognizer("resnet-9000")
    assert str(err.value) == "unknown recognizer 'resnet-9000'; choose one of efficientnet-lite0, vgg16"


def test_a_second_recognizer_of_a_known_name_is_refused():
    from edgepipe.recognition.registry import RECOGNIZER_REGISTRY, Recognizer, register_recognizer

    vgg = RECOGNIZER_REGISTRY["vgg16"]
    with pytest.raises(EdgepipeError, match="recognizer 'vgg16' is registered twice"):
        register_recognizer(Recognizer("vgg16", VGG16, None, no_weights="give --weights"))
    assert RECOGNIZER_REGISTRY["vgg16"] is vgg


@pytest.mark.usefixtures("keep_signal_handlers")
@pytest.mark.parametrize("command", [
    ["train", "--data", "{images}", "--out", "{tmp}/ed.pt"],
    ["eval", "--data", "{images}", "--out", "{tmp}/eval"],
    ["monitor", "--connect", "tcp://127.0.0.1:5555"],
    ["demo"],
    ["preview", "{image}", "-o", "{tmp}/p.png"],
    ["recognizer-repo", "--out", "{tmp}/repo"],
], ids=lambda c: c[0])
def test_a_wrong_recognizer_name_is_one_line_listing_the_known_ones_in_every_command(command, small_val_folder,
                                                                                      tmp_path):
    from click.testing import CliRunner

    from edgepipe.cli import cli

    image = str(list_labelled_images(small_val_folder)[0].path)
    args = [a.replace("{images}", str(small_val_folder)).replace("{tmp}", str(tmp_path)).replace("{image}", image)
            for a in command]
    result = CliRunner().invoke(cli, [*args, "--recognizer", "resnet"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: Invalid value for '--recognizer': 'resnet' is not one of 'efficientnet-lite0', "
                      "'vgg16'."], result.output
    assert not any(tmp_path.iterdir())  # refused before any work
