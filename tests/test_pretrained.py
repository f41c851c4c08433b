"""A real pretrained model end to end: torchvision MobileNetV2 with its ImageNet weights, ternarized,
saved, loaded, on real ImageNet photos."""

import pytest
import torch
from PIL import Image
from real_data import imagenet_photos, mobilenet_v2_imagenet_state_dict
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

import quantswap


@pytest.fixture(scope="module")
def photos():
    preprocess = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    items = imagenet_photos()
    assert len(items) == 20
    batch = torch.stack([preprocess(Image.open(p).convert("RGB")) for p, _ in items])
    return batch, torch.tensor([label for _, label in items])


def test_real_mobilenet_v2_ternarized_keeps_its_predictions_through_save_and_load(photos, tmp_path):
    images, labels = photos
    fp = mobilenet_v2()
    fp.load_state_dict(mobilenet_v2_imagenet_state_dict())
    fp.eval()
    with torch.no_grad():
        assert (fp(images).argmax(1) == labels).sum() >= 17  # the real weights: 18 of 20 per DATA.md

    tnn = quantswap.ternarize(fp, expansion=2).eval()
    quantswap.save_pretrained(tnn, tmp_path / "mbv2-ternary")
    loaded = quantswap.from_pretrained(tmp_path / "mbv2-ternary")
    with torch.no_grad():
        before, after = tnn(images), loaded(images)
    assert torch.equal(before.argmax(1), after.argmax(1))
    assert torch.equal(before, after)
    config = loaded.meta["quantswap_checkpoint"]
    assert config.base_model.to_dict() == {"name": "torchvision:mobilenet_v2", "args": {}}
