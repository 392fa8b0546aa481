"""The engine registry: every kind found by name or file suffix, TV-L1 through `load_engine`, one-line errors."""
from __future__ import annotations

import re

import numpy as np
import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.engines import ENGINES, EngineKind, IdentityEngine, load_engine, parse_spec, register_engine
from edgepipe.engines.tvl1 import DEFAULT_LAMBDA, TVL1Engine, tvl1_rgb


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (2, 24, 32, 3), dtype=np.uint8)


def test_the_kinds_and_how_they_are_chosen(tmp_path):
    assert ENGINES.names() == ("none", "onnx", "tensorrt", "torch", "tvl1")
    assert parse_spec(None) == (ENGINES["none"], None) and parse_spec("none") == (ENGINES["none"], None)
    assert parse_spec("tvl1") == (ENGINES["tvl1"], None)
    assert parse_spec("tvl1:1.5") == (ENGINES["tvl1"], "1.5")
    kind, path = parse_spec("ours")  # a shipped model name: its .onnx file
    assert kind is ENGINES["onnx"] and path.endswith("ours.onnx")
    for suffix, name in ((".onnx", "onnx"), (".pt", "torch"), (".PTH", "torch"), (".plan", "tensorrt"),
                         (".engine", "tensorrt")):
        model = tmp_path / f"model{suffix}"
        model.write_bytes(b"x")  # chosen by suffix; nothing is loaded
        assert parse_spec(str(model)) == (ENGINES[name], str(model))


def test_tvl1_loads_through_load_engine(frames):
    default = load_engine("tvl1")
    assert isinstance(default, TVL1Engine) and default.lam == DEFAULT_LAMBDA
    assert default.model_id == "tvl1-lam2-it100"  # the id evaluation caches were keyed with
    engine = load_engine("tvl1:1.5", threads=1)
    assert engine.model_id == "tvl1-lam1.5-it100"
    out = engine.run(frames)
    np.testing.assert_array_equal(out, tvl1_rgb(frames, 1.5))
    assert not np.array_equal(out, frames)
    assert ENGINES["tvl1"].preferred_batch == 1 and ENGINES["onnx"].preferred_batch > 1


def test_none_passes_frames_through(frames):
    engine = load_engine(None)
    assert isinstance(engine, IdentityEngine) and engine.run(frames) is frames


@pytest.mark.parametrize("spec, message", [
    ("tvl1:abc", "bad TV-L1 weight in 'tvl1:abc': use tvl1 or tvl1:LAMBDA"),
    ("tvl1:", "bad TV-L1 weight in 'tvl1:'"),
    ("tvl1:-2", "TV-L1 weight must be positive, got 'tvl1:-2'"),
    ("tvl1:nan", "TV-L1 weight must be positive"),
    ("none:1", "engine none takes no parameters, got 'none:1'"),
    ("no-such-model", "model not found: 'no-such-model' is neither a file nor a shipped model name"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(EdgepipeError, match="^" + re.escape(message)) as err:
        load_engine(spec)
    assert "\n" not in str(err.value)


def test_an_unknown_model_type_names_every_way_to_give_one(tmp_path):
    weird = tmp_path / "model.tflite"
    weird.write_bytes(b"x")
    with pytest.raises(EdgepipeError) as err:
        load_engine(str(weird))
    assert str(err.value) == (f"unknown model type '.tflite' for {weird}: use a model file (.onnx, .plan, .engine, "
                              ".pt, .pth) or shipped model name (ours), or one of none, tvl1[:LAMBDA]")


def test_a_second_kind_of_a_known_name_is_refused():
    tvl1 = ENGINES["tvl1"]
    with pytest.raises(EdgepipeError, match="engine 'tvl1' is registered twice"):
        register_engine(EngineKind("tvl1", lambda argument, threads: IdentityEngine()))
    assert ENGINES["tvl1"] is tvl1
