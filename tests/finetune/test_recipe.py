"""The fine-tuning recipe: the pretrained architecture as a whole, the parts handed over, the freeze schedule."""

import pytest
import torch

from sslseg.finetune import recipe
from sslseg.models.build import build_model

INIT = {"arch": "unet", "model_kwargs": {"in_channels": 1, "num_classes": 3, "base_channels": 4, "depth": 2,
                                         "norm": "group"}, "trained_parts": ["encoder", "decoder"]}


def test_model_options_are_the_pretrained_networks():
    # every architecture option comes over; the data decide channels and classes
    assert recipe.model_options(INIT, "unet", {}, "pre.pt") == {"base_channels": 4, "depth": 2, "norm": "group"}
    assert recipe.model_options(INIT, "unet", {"depth": 2}, "pre.pt")["depth"] == 2  # repeating one is fine
    assert recipe.model_options(None, "unet", {"depth": 3}, "random") == {"depth": 3}
    with pytest.raises(ValueError, match=r"^pre.pt: pretrained with model option depth = 2, but model.options.depth "
                                         r"is 3; leave it out or give the same value$"):
        recipe.model_options(INIT, "unet", {"depth": 3}, "pre.pt")
    with pytest.raises(ValueError, match="made for arch 'unet', but --arch is 'deeplabv3'"):
        recipe.model_options(INIT, "deeplabv3", {}, "pre.pt")


def test_transfer_parts_default_to_what_the_pretext_trained():
    assert recipe.transfer_parts(INIT, None, "pre.pt") == ("encoder", "decoder")
    assert recipe.transfer_parts({**INIT, "trained_parts": ["encoder", "head"]}, None, "pre.pt") == ("encoder",)
    assert recipe.transfer_parts(INIT, "decoder", "pre.pt") == ("decoder",)
    with pytest.raises(ValueError, match="unknown part 'head'"):
        recipe.transfer_parts(INIT, ["head"], "pre.pt")
    with pytest.raises(ValueError, match="pre.pt pretrained only encoder"):
        recipe.transfer_parts({**INIT, "trained_parts": ["encoder"]}, ["decoder"], "pre.pt")


@pytest.mark.parametrize("kwargs, expected", [
    ({"pretrained_encoder": True}, 20),  # the fraction of the steps
    ({"pretrained_encoder": False}, 0),  # nothing to keep
    # a random encoder is never frozen, even when asked: it would weaken the baseline every gain is measured on
    ({"pretrained_encoder": False, "given_steps": 7}, 0),
    ({"pretrained_encoder": False, "given_epochs": 2, "epoch_steps": 3}, 0),
    ({"pretrained_encoder": True, "given_steps": 7, "given_epochs": 2, "epoch_steps": 3}, 6),  # epochs win
    ({"pretrained_encoder": True, "given_epochs": 50, "epoch_steps": 3}, 100),  # at most every step
])
def test_freeze_steps(kwargs, expected):
    assert recipe.freeze_steps(100, fraction=0.2, **kwargs) == expected


@pytest.mark.parametrize("cases, expected", [(1, 50), (2, 20), (4, 20), (None, 20)])
def test_automatic_freeze_is_longer_with_one_labelled_case(cases, expected):
    assert recipe.freeze_steps(100, True, None, labelled_cases=cases) == expected
    assert recipe.freeze_steps(100, False, None, labelled_cases=cases) == 0


def test_param_groups_give_a_pretrained_encoder_its_own_rate():
    model = build_model("unet", base_channels=4, depth=2)
    assert recipe.param_groups(model, model, 1e-3, 1.0, True, 0) is None
    assert len(recipe.param_groups(model, model, 1e-3, 1.0, True, 5)) == len(list(model.parameters()))
    enc, rest = recipe.param_groups(model, model, 1e-3, 0.1, True, 0)
    assert enc["lr"] == pytest.approx(1e-4) and "lr" not in rest
    assert len(enc["params"]) + len(rest["params"]) == len(list(model.parameters()))
    assert all(isinstance(p, torch.nn.Parameter) for p in enc["params"])
