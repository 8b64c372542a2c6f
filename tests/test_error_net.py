"""The command line's error net: a UserError is one line and exit 2; anything else keeps its traceback."""

import pytest

from sslseg import cli
from sslseg.errors import UserError


def _command_raising(monkeypatch, err):
    def boom(args):
        raise err

    monkeypatch.setitem(cli.COMMANDS, "archs", boom)


def test_a_user_error_is_one_line_and_exit_2(monkeypatch, capsys):
    _command_raising(monkeypatch, UserError("data.yaml: key 'spec' is missing"))
    assert cli.main(["archs"]) == 2
    err = capsys.readouterr().err
    assert err == "sslseg archs: error: data.yaml: key 'spec' is missing\n"


def test_a_value_error_from_a_library_keeps_its_traceback(monkeypatch):
    # e.g. numpy or torch refusing a shape: a bug to report, not input to fix
    _command_raising(monkeypatch, ValueError("operands could not be broadcast together"))
    with pytest.raises(ValueError, match="broadcast"):
        cli.main(["archs"])


def test_a_type_error_inside_a_builder_is_not_turned_into_bad_input():
    from sslseg.models.build import MODELS, build_model

    def broken(in_channels=1, num_classes=2, base_channels=16):
        return len(None)  # a bug inside the builder, not a misspelt option

    MODELS.add("broken-for-test", broken, "a builder with a bug")
    try:
        with pytest.raises(TypeError, match="NoneType"):
            build_model("broken-for-test", base_channels=4)
        with pytest.raises(UserError, match="takes no option 'base_channel' .it takes base_channels"):
            build_model("broken-for-test", base_channel=4)
    finally:
        MODELS.remove("broken-for-test")


def test_debug_shows_the_user_errors_traceback(monkeypatch):
    _command_raising(monkeypatch, UserError("data.yaml: key 'spec' is missing"))
    with pytest.raises(UserError, match="spec"):
        cli.main(["--debug", "archs"])
