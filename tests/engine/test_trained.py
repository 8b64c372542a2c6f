"""open_trained: the one way to open a fine-tuned checkpoint; its errors are one line naming the file."""

from __future__ import annotations

import pytest
import torch

from sslseg.engine.checkpoint import save_checkpoint
from sslseg.engine.trained import open_trained
from sslseg.models.build import build_model

KWARGS = {"in_channels": 1, "num_classes": 3, "base_channels": 4, "depth": 2}
PRE = {"normalizer": {"mean": 0.1, "std": 0.3, "scale": 1.0}, "image_size": 32}


def _save(path, stage="finetune", preprocess=PRE, spec="synthetic-mri", **extra):
    model = build_model("unet", **KWARGS)
    config = {"data": {"spec": spec, "options": {"intensity": "zscore"}}}
    save_checkpoint(path, model, "unet", KWARGS, config, stage=stage, preprocess=preprocess, **extra)
    return model


def test_model_and_preprocessing(tmp_path):
    path = tmp_path / "ft.pt"
    model = _save(path, preprocess={**PRE, "native_size": [32, 32], "frames": "native", "spacing": [0.5, 0.7]},
                  dataset="synthetic-mri")
    t = open_trained(path)
    assert not t.model.training
    assert (t.arch, t.image_size, t.in_channels, t.num_classes, t.intensity) == ("unet", 32, 1, 3, "zscore")
    assert (t.normalizer.mean, t.normalizer.std, t.normalizer.scale) == (0.1, 0.3, 1.0)
    assert (t.frames, t.native_size, t.spacing, t.dataset) == ("native", (32, 32), (0.5, 0.7), "synthetic-mri")
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(t.model(x), model.eval()(x))


@pytest.mark.parametrize("spec, native, frames", [("synthetic-echo", None, "echo-sector"),
                                                   ("folder:x", [32, 32], "native"),
                                                   ("folder:x", [40, 50], "resized")])
def test_older_checkpoints_get_their_training_frames_from_the_spec(tmp_path, spec, native, frames):
    _save(tmp_path / "old.pt", preprocess={**PRE, "native_size": native}, spec=spec)
    assert open_trained(tmp_path / "old.pt").frames == frames


@pytest.mark.parametrize("what, kwargs, message", [
    ("pretrain", {"stage": "pretrain"}, "a pretrain checkpoint has no trained segmentation head; fine-tune it first"),
    ("no preprocess", {"preprocess": None}, "the checkpoint records no preprocessing (normalizer, image_size)"),
    ("bad frames", {"preprocess": {**PRE, "frames": "zoomed"}}, "preprocess.frames is 'zoomed'; expected one of"),
])
def test_refusals_are_one_line_naming_the_file(tmp_path, what, kwargs, message):
    path = tmp_path / "c.pt"
    _save(path, **kwargs)
    with pytest.raises(ValueError) as err:
        open_trained(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_weights_that_do_not_fit_name_the_file(tmp_path):
    path = tmp_path / "c.pt"
    _save(path)
    ck = torch.load(path, weights_only=True)
    ck["model_kwargs"] = {**KWARGS, "num_classes": 5}
    torch.save(ck, path)
    with pytest.raises(ValueError, match=rf"^{path}: its weights do not fit its model_kwargs \("):
        open_trained(path)
