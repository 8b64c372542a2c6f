import pytest
import torch

from sslseg.engine.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from sslseg.models.build import build_model


@pytest.mark.parametrize("in_ch,k", [(1, 2), (3, 4)])
@pytest.mark.parametrize("hw", [(32, 32), (37, 45)])
def test_forward_backward_shapes(in_ch, k, hw):
    m = build_model("unet", in_channels=in_ch, num_classes=k, base_channels=4, depth=3)
    x = torch.randn(2, in_ch, *hw, requires_grad=True)
    y = m(x)
    assert y.shape == (2, k, *hw)
    y.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())


def test_encoder_exposes_stages():
    m = build_model("unet", base_channels=4, depth=3)
    feats = m.encoder(torch.randn(1, 1, 32, 32))
    assert [f.shape[1] for f in feats] == m.encoder.out_channels == [4, 8, 16, 32]
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4]


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_norms(norm):
    m = build_model("unet", base_channels=8, depth=2, norm=norm)
    assert m(torch.randn(2, 1, 16, 16)).shape == (2, 2, 16, 16)


def test_unknown_arch_lists_choices():
    with pytest.raises(ValueError, match="choose one of .*unet"):
        build_model("vnet")


def test_checkpoint_round_trip_gives_identical_output(tmp_path):
    kw = {"in_channels": 1, "num_classes": 3, "base_channels": 4, "depth": 2}
    m = build_model("unet", **kw).eval()
    save_checkpoint(tmp_path / "m.pt", m, "unet", kw, {"a": 1})
    assert not list(tmp_path.glob("*.tmp"))
    m2 = model_from_checkpoint(load_checkpoint(tmp_path / "m.pt")).eval()
    x = torch.randn(2, 1, 24, 24)
    assert torch.equal(m(x), m2(x))


def test_bad_checkpoints_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="sslseg/1"):
        load_checkpoint(tmp_path / "foreign.pt")
