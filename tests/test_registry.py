"""The one registry style: names in registration order, one line each, a wrong name listing the valid ones."""

import pytest

from sslseg.registry import Registry


def _colours():
    reg = Registry("colour", shown=lambda name, entry: f"{name}:HEX" if entry.info.get("hex") else name)
    reg.add("red", 1, "the first")

    @reg.register("blue", "the second", hex=True)
    def blue():
        return 2

    return reg, blue


def test_entries_keep_their_value_description_and_order():
    reg, blue = _colours()
    assert list(reg) == ["red", "blue"] and len(reg) == 2 and "blue" in reg and "green" not in reg
    assert reg.get("red") == 1 and reg.get("blue") is blue
    assert reg.entry("blue").info == {"hex": True}
    assert reg.listing() == {"red": "the first", "blue:HEX": "the second"}
    assert reg.choices() == "blue:HEX, red" and reg.choices(also=("none",)) == "none, blue:HEX, red"
    reg.remove("red")
    assert list(reg) == ["blue"]


def test_a_wrong_name_is_one_line_with_the_choices():
    reg, _ = _colours()
    with pytest.raises(ValueError, match=r"^unknown colour 'green'; choose one of blue:HEX, red$"):
        reg.get("green")
    with pytest.raises(ValueError, match=r"^unknown colour 'green:/x'; choose one of none, blue:HEX, red$"):
        reg.check("green", also=("none",), given="green:/x")
    reg.check("none", also=("none",))  # an extra name the caller accepts
