"""Help that teaches: every flag explained, defaults shown, an example per command, listings from the registries."""

import argparse

import pytest

from sslseg.cli import build_parser, main


def _subparsers():
    ap = build_parser()
    (sub,) = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_every_flag_has_help_and_the_help_ends_with_an_example(name):
    p = _subparsers()[name]
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"sslseg {name}: {action.option_strings or action.dest} has no help text"
    text = p.format_help().rstrip().splitlines()
    example = text.index("example:")
    assert all(line.strip().startswith(f"sslseg {name}") for line in text[example + 1:] if line.strip())


def test_defaults_and_choices_are_shown():
    from sslseg.experiments.config import FinetuneConfig, PretrainConfig

    sub = _subparsers()
    pre = " ".join(sub["pretrain"].format_help().split())  # unwrapped
    # flags that --config may set have no argparse default; their help names the config default
    assert "config default: unet" in pre and "config default: 32-true" in pre
    assert f"config default: {PretrainConfig.steps} pretrain, {FinetuneConfig.steps} finetune" in pre
    assert "one of byol, global_contrastive" in pre and "synthetic-echo" in pre  # from the registries
    ev = " ".join(sub["evaluate"].format_help().split())
    assert "{train,val,test}" in ev and "(default: test)" in ev and "largest_component" in ev
    assert "(default: None)" not in pre + ev  # no default shown where there is none


@pytest.mark.parametrize("argv, module, attr", [
    (["methods"], "sslseg.pretrain.build", "METHODS"),
    (["archs"], "sslseg.models.build", "MODELS"),
    (["data", "--list"], "sslseg.data.registry", "DATASETS"),
])
def test_listings_name_everything_registered_one_line_each(argv, module, attr, capsys):
    import importlib

    registry = getattr(importlib.import_module(module), attr)
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    names = [line.split()[0].split(":")[0] for line in lines]
    for n in registry:
        assert names.count(n) == 1, n
        (line,) = [line for line in lines if line.split()[0].split(":")[0] == n]
        assert len(line.split()) > 2  # a name and a description


def test_every_registered_name_has_a_description():
    from sslseg.data.registry import DATASETS
    from sslseg.models.build import MODELS
    from sslseg.pretrain.build import METHODS

    for registry in (DATASETS, MODELS, METHODS):
        texts = registry.listing()
        assert len(texts) == len(registry) and all(t.strip() for t in texts.values())


def test_data_without_a_spec_or_list_is_one_line(capsys):
    assert main(["data"]) == 2
    assert "give a data set spec, or --list" in capsys.readouterr().err
