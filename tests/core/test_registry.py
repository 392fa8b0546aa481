"""The registry every extensible thing (codec, engine, recognizer) is found by name through."""
from __future__ import annotations

import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.registry import Registry


def test_registered_items_come_back_by_name_in_registration_order():
    fruit: Registry[int] = Registry("fruit")
    assert fruit.register("pear", 1) == 1
    fruit.register("apple", 2)
    assert fruit["pear"] == 1 and fruit["apple"] == 2
    assert fruit.names() == ("pear", "apple") and list(fruit) == ["pear", "apple"]
    assert fruit.values() == (1, 2) and len(fruit) == 2
    assert "apple" in fruit and "plum" not in fruit


def test_a_name_registered_twice_is_refused_and_the_first_kept():
    fruit: Registry[int] = Registry("fruit")
    fruit.register("pear", 1)
    with pytest.raises(EdgepipeError, match="^fruit 'pear' is registered twice$"):
        fruit.register("pear", 2)
    assert fruit["pear"] == 1 and len(fruit) == 1


@pytest.mark.parametrize("name", ["", " pear", "pear "])
def test_a_blank_or_padded_name_is_refused(name):
    with pytest.raises(EdgepipeError, match="non-empty without surrounding spaces"):
        Registry("fruit").register(name, 1)


def test_an_unknown_name_is_one_line_naming_every_choice():
    fruit: Registry[int] = Registry("fruit")
    fruit.register("pear", 1)
    fruit.register("apple", 2)
    for wrong in ("plum", ["not", "hashable"]):
        with pytest.raises(EdgepipeError) as err:
            fruit[wrong]
        assert str(err.value) == f"unknown fruit {wrong!r}; choose one of pear, apple"
        assert err.value.__cause__ is None and err.value.__suppress_context__  # no KeyError chained
