"""DeepLabV3 against a manifest of torchvision's ``deeplabv3_resnet50`` state_dict (names, shapes, dtypes).

The manifest was written once from torchvision itself, in a separate
environment (the project does not install torchvision); see its ``source``.
It also holds torchvision's logits for RNG-free weights and input defined
below, so the forward pass (dilations, ASPP rates, padding, upsampling) is
checked against torchvision's numbers, not only the names.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sslseg.finetune.transfer import match_input_channels, read_init, strip_prefix, transfer_weights
from sslseg.models.build import build_model


def load_torchvision_state_dict(model, state_dict: dict) -> list[str]:
    """A torchvision ``deeplabv3_resnet50`` state_dict into our DeepLabV3, strictly: the keys adapted."""
    state_dict, adapted = match_input_channels(model, strip_prefix(dict(state_dict)))
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise ValueError(f"the state_dict does not fit this DeepLabV3: {err}") from None
    return adapted

MANIFEST = json.loads((Path(__file__).parent / "deeplabv3_resnet50_manifest.json").read_text())


def fake_state_dict(num_classes: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the manifest's names, shapes and dtypes (head resized to K)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape, dtype in MANIFEST["tensors"]:
        if name.startswith("classifier.4."):
            shape = [num_classes, *shape[1:]]
        if dtype == "int64":
            out[name] = torch.tensor(7, dtype=torch.int64).reshape(shape)
        elif name.endswith("running_var"):
            out[name] = torch.rand(shape, generator=g) + 0.5
        else:
            out[name] = 0.05 * torch.randn(shape, generator=g)
    return out


def patterned_state_dict(tensors: list, num_classes: int = 1) -> dict[str, torch.Tensor]:
    """Deterministic, RNG-free weights: scaled sines of the element index, one phase per tensor.

    The same function produced the manifest's ``reference_output`` with torchvision.
    """
    out = {}
    for i, (name, shape, dtype) in enumerate(tensors):
        if name.startswith("classifier.4."):
            shape = [num_classes, *shape[1:]]
        s = torch.sin(torch.arange(math.prod(shape), dtype=torch.float64) * 0.37 + i).reshape(shape)
        if dtype == "int64":
            out[name] = torch.zeros(shape, dtype=torch.int64)
            continue
        if name.endswith("running_var"):
            t = 0.5 + s * s
        elif name.endswith("running_mean") or name.endswith("bias"):
            t = 0.1 * s
        elif len(shape) == 4:
            # He-scaled, so activations keep their size through 50 layers
            t = s * math.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
        else:
            t = 1.0 + 0.1 * s
        out[name] = t.to(torch.float32)
    return out


def patterned_input(shape=(1, 3, 161, 145)) -> torch.Tensor:
    return torch.sin(torch.arange(math.prod(shape), dtype=torch.float64) * 0.7).reshape(shape).to(torch.float32)


@pytest.fixture(scope="module")
def fake() -> dict[str, torch.Tensor]:
    return fake_state_dict()


def test_names_shapes_dtypes_and_order_match_torchvision():
    model = build_model("deeplabv3", in_channels=3, num_classes=1)
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert ours == MANIFEST["tensors"]
    assert len(ours) == MANIFEST["num_tensors"] == 362
    assert sum(p.numel() for p in model.parameters()) == MANIFEST["num_parameters"] == 39_633_729


def test_logits_equal_torchvision_for_the_same_weights():
    """161 x 145 is large enough that ASPP rates 12/24 reach inside the 21 x 19 feature map."""
    ref = MANIFEST["reference_output"]
    model = build_model("deeplabv3", in_channels=3, num_classes=1).eval()
    model.load_state_dict(patterned_state_dict(MANIFEST["tensors"]), strict=True)
    with torch.no_grad():
        y = model(patterned_input(tuple(ref["input_shape"])))
    assert y.shape == (1, 1, *ref["input_shape"][2:])
    expected = torch.tensor(ref["values"]).reshape(ref["shape"])
    # measured: 5e-7 with the right network, 3e-3 with ASPP rates (6, 12, 18)
    torch.testing.assert_close(y[:, 0, ::8, ::8], expected, rtol=0, atol=5e-5)


def test_torchvision_state_dict_loads_strictly_and_is_used(fake):
    model = build_model("deeplabv3", in_channels=3, num_classes=1)
    assert load_torchvision_state_dict(model, fake) == []
    for key, value in model.state_dict().items():
        assert torch.equal(value, fake[key]), key
    # strict also through plain load_state_dict
    model.load_state_dict(fake, strict=True)


def test_other_class_count_differs_only_in_the_head(fake):
    model = build_model("deeplabv3", in_channels=3, num_classes=4)
    differ = [k for k, v in model.state_dict().items() if tuple(v.shape) != tuple(fake[k].shape)]
    assert differ == ["classifier.4.weight", "classifier.4.bias"]
    with pytest.raises(ValueError, match="does not fit this DeepLabV3"):
        load_torchvision_state_dict(model, fake)
    load_torchvision_state_dict(model, fake_state_dict(num_classes=4))


def test_one_channel_model_sums_the_first_conv_and_sees_gray_as_rgb(fake):
    rgb = build_model("deeplabv3", in_channels=3, num_classes=1)
    load_torchvision_state_dict(rgb, fake)
    gray = build_model("deeplabv3", in_channels=1, num_classes=1)
    assert load_torchvision_state_dict(gray, fake) == ["backbone.conv1.weight"]
    torch.testing.assert_close(gray.backbone.conv1.weight, fake["backbone.conv1.weight"].sum(1, keepdim=True))
    rgb.eval()
    gray.eval()
    x = torch.randn(2, 1, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


def test_part_of_splits_torchvision_names():
    model = build_model("deeplabv3", in_channels=3, num_classes=1)
    parts = {name: model.part_of(name) for name, _, _ in MANIFEST["tensors"]}
    assert sum(p == "encoder" for p in parts.values()) == sum(n.startswith("backbone.") for n in parts)
    assert [n for n, p in parts.items() if p == "head"] == ["classifier.4.weight", "classifier.4.bias"]
    assert parts["classifier.0.convs.4.1.weight"] == "decoder"  # the ASPP image-pooling branch
    assert model.part_of("aux_classifier.0.weight") is None


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 45, "best_loss": 0.07},
        lambda sd: {"model": sd},
    ],
    ids=["bare", "echonet-style-dataparallel", "model-key"],
)
def test_read_init_accepts_plain_state_dicts(tmp_path, fake, wrap):
    path = tmp_path / "weights.pt"
    torch.save(wrap(fake), path)
    init = read_init(path)
    assert init["arch"] == "deeplabv3" and init["trained_parts"] == ["encoder", "decoder"]
    assert list(init["state_dict"]) == list(fake)
    # fine-tuning a grayscale, 2-class model from it: encoder and decoder move, the K=1 head cannot
    model = build_model("deeplabv3", in_channels=1, num_classes=2)
    report = transfer_weights(model, init["state_dict"], tuple(init["trained_parts"]))
    assert len(report.loaded["encoder"]) == sum(k.startswith("backbone.") for k in fake)
    assert len(report.loaded["decoder"]) == sum(k.startswith("classifier.") for k in fake) - 2
    assert "head" not in report.loaded and report.adapted == ["backbone.conv1.weight"]
    torch.testing.assert_close(model.classifier[0].project[0].weight, fake["classifier.0.project.0.weight"])


def test_read_init_refuses_other_namings(tmp_path):
    path = tmp_path / "unet.pt"
    torch.save({"encoder.stages.0.0.weight": torch.zeros(4, 1, 3, 3)}, path)
    with pytest.raises(ValueError, match="unet.pt: a plain state_dict, but not in torchvision's DeepLabV3 naming"):
        read_init(path)
    torch.save({"epoch": 3}, path)
    with pytest.raises(ValueError, match="neither an sslseg/1 checkpoint nor a state_dict"):
        read_init(path)
    with pytest.raises(ValueError, match="checkpoint not found"):
        read_init(tmp_path / "missing.pt")
