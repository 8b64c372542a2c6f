"""One model contract, one shared test class, subclassed per architecture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sslseg.engine.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from sslseg.finetune.transfer import _HOOK, freeze_encoder, transfer_weights
from sslseg.models.build import MODELS, build_model
from sslseg.models.segmentation import PARTS, SegmentationModel


def is_frozen(model) -> bool:
    """Whether freeze_encoder holds the encoder frozen (its BatchNorm hook is in place)."""
    return getattr(model.encoder, _HOOK, None) is not None


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Biases and BatchNorm affine parameters and statistics to random values.

    Convolution weights are random already (and differ between build seeds);
    left at their initial 0 / 1, BatchNorm tensors would match between any two
    models and hide a tensor that failed to move.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point() and t.ndim == 1:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if key.endswith("running_var") else 0.1 * torch.randn(t.shape, generator=g))


def _identity_parts(model: SegmentationModel) -> dict[str, str]:
    """A second way to assign state_dict keys to parts: by tensor identity with the part modules."""
    ids = {}
    for part in PARTS:
        for t in getattr(model, part).state_dict(keep_vars=True).values():
            ids[id(t)] = part
    return {k: ids.get(id(t)) for k, t in model.state_dict(keep_vars=True).items()}


class ModelContract:
    """Behaviour every architecture in :data:`MODELS` must show. Subclasses set ``arch`` and ``options``."""

    arch: str
    options: dict
    size = (32, 32)
    odd_size = (37, 45)

    def build(self, in_channels: int = 1, num_classes: int = 2, seed: int = 0) -> SegmentationModel:
        torch.manual_seed(seed)
        return build_model(self.arch, in_channels=in_channels, num_classes=num_classes, **self.options)

    @pytest.mark.parametrize("in_channels,num_classes", [(1, 1), (3, 4)])
    def test_forward_backward(self, in_channels, num_classes):
        model = self.build(in_channels, num_classes)
        x = torch.randn(2, in_channels, *self.size, requires_grad=True)
        y = model(x)
        assert y.shape == (2, num_classes, *self.size)
        y.square().mean().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        no_grad = [n for n, p in model.named_parameters() if p.grad is None]
        assert not no_grad, no_grad[:3]

    def test_odd_size_gives_logits_of_the_input_size(self):
        model = self.build().eval()
        x = torch.randn(2, 1, *self.odd_size)
        with torch.no_grad():
            y = model(x)
        assert y.shape == (2, 2, *self.odd_size)
        assert torch.isfinite(y).all()

    def test_encoder_features_match_declared_channels(self):
        model = self.build().eval()
        with torch.no_grad():
            feats = model.encoder(torch.randn(2, 1, *self.size))
        assert [f.shape[1] for f in feats] == list(model.encoder.out_channels)
        # the deepest feature sits at 1/reduction of the input
        assert feats[-1].shape[-2:] == tuple(s // model.encoder.reduction for s in self.size)
        assert isinstance(model, SegmentationModel)

    def test_part_of_agrees_with_the_part_modules(self):
        model = self.build()
        by_identity = _identity_parts(model)
        by_name = {k: model.part_of(k) for k in model.state_dict()}
        assert by_name == by_identity
        assert set(by_name.values()) == set(PARTS)
        # parameters are not registered twice (encoder/decoder/head are the registered modules or views on them)
        n_parts = sum(sum(p.numel() for p in getattr(model, part).parameters()) for part in PARTS)
        assert n_parts == sum(p.numel() for p in model.parameters())

    def test_checkpoint_round_trip_gives_identical_output(self, tmp_path):
        kw = {"in_channels": 1, "num_classes": 3, **self.options}
        model = self.build(1, 3)
        _randomise(model, 1)
        model.eval()
        save_checkpoint(tmp_path / "m.pt", model, self.arch, kw, {})
        again = model_from_checkpoint(load_checkpoint(tmp_path / "m.pt")).eval()
        x = torch.randn(2, 1, *self.size)
        with torch.no_grad():
            assert torch.equal(model(x), again(x))

    def test_transfer_moves_exactly_the_encoder(self):
        src = self.build(seed=0)
        _randomise(src, 1)
        dst = self.build(seed=2)
        before = {k: v.clone() for k, v in dst.state_dict().items()}
        report = transfer_weights(dst, src.state_dict(), parts=("encoder",))
        after = dst.state_dict()
        encoder_keys = [k for k, part in _identity_parts(dst).items() if part == "encoder"]
        assert report.loaded == {"encoder": encoder_keys}
        assert not report.unexpected
        for key, value in after.items():
            expected = src.state_dict()[key] if key in encoder_keys else before[key]
            assert torch.equal(value, expected), key
        # and something outside the encoder really differed, so the check above had teeth
        assert any(not torch.equal(before[k], src.state_dict()[k]) for k in after if k not in encoder_keys)

    def test_three_channel_weights_into_one_channel_encoder_sum_the_first_conv(self):
        rgb = self.build(in_channels=3)
        _randomise(rgb, 3)
        gray = self.build(in_channels=1)
        report = transfer_weights(gray, rgb.state_dict(), parts=("encoder",))
        assert len(report.adapted) == 1
        rgb.eval()
        gray.eval()
        x = torch.randn(2, 1, *self.size)
        with torch.no_grad():
            # a grayscale image replicated to three channels meets the same filters
            expected = rgb.encoder(x.repeat(1, 3, 1, 1))[-1]
            got = gray.encoder(x)[-1]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)

    def test_frozen_encoder_keeps_weights_and_statistics(self):
        model = self.build()
        freeze_encoder(model, True)
        model.train()  # as the loop does after a validation; the freeze must survive it
        enc_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
        dec_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
        # weight decay would move parameters without a gradient if the optimiser saw them
        opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1)
        x = torch.randn(2, 1, *self.size)
        target = torch.randint(0, 2, (2, *self.size))
        opt.zero_grad()
        F.cross_entropy(model(x), target).backward()
        opt.step()
        assert all(p.grad is None for p in model.encoder.parameters())
        for k, v in model.encoder.state_dict().items():
            assert torch.equal(v, enc_before[k]), k
        assert any(not torch.equal(v, dec_before[k]) for k, v in model.decoder.state_dict().items())
        assert is_frozen(model)
        freeze_encoder(model, False)
        assert not is_frozen(model)
        assert all(p.requires_grad for p in model.parameters())
        # released: BatchNorm follows the model's mode again
        norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert all(m.training for m in norms)


class TestUNet(ModelContract):
    arch = "unet"
    options = {"base_channels": 4, "depth": 3}

    @pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
    def test_norms(self, norm):
        model = build_model("unet", base_channels=8, depth=2, norm=norm)
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, 2, 16, 16)

    def test_non_divisible_size_is_padded_and_cropped_back(self):
        model = self.build().eval()
        x = torch.randn(1, 1, 30, 27)
        # reduction 8: pad bottom/right by reflection to 32 x 32, then crop the logits
        padded = F.pad(x, (0, 5, 0, 2), mode="reflect")
        with torch.no_grad():
            torch.testing.assert_close(model(x), model(padded)[..., :30, :27])

    def test_depth_and_width(self):
        model = build_model("unet", base_channels=6, depth=2)
        assert model.encoder.out_channels == [6, 12, 24]
        assert model.encoder.reduction == 4


class TestDeepLabV3(ModelContract):
    arch = "deeplabv3"
    options: dict = {}
    size = (32, 32)
    odd_size = (33, 41)

    def test_three_channel_weights_into_one_channel_encoder_sum_the_first_conv(self):
        pytest.skip("checked on the whole network, with torchvision's layout, in test_torchvision_manifest.py")

    def test_output_stride_16_halves_the_deepest_resolution(self):
        model = build_model("deeplabv3", output_stride=16).eval()
        with torch.no_grad():
            feats = model.encoder(torch.randn(2, 1, 64, 64))
        assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 4]
        assert model.encoder.reduction == 16
        assert model.classifier[0].convs[1][0].dilation == (6, 6)

    def test_bad_output_stride_names_the_valid_ones(self):
        with pytest.raises(ValueError, match=r"output_stride must be one of \[8, 16, 32\]"):
            build_model("deeplabv3", output_stride=4)


def test_every_registered_architecture_has_a_contract_test():
    tested = {cls.arch for cls in ModelContract.__subclasses__()}
    assert tested == set(MODELS)


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(ValueError, match="choose one of deeplabv3, unet"):
        build_model("vnet")
    with pytest.raises(ValueError, match="deeplabv3"):
        build_model("deeplabv3", base_channels=4)
