"""The codec registry: every codec's description, its round trip through the registry, and the wire ids."""
from __future__ import annotations

import numpy as np
import pytest

from edgepipe.core.datasets import list_labelled_images, read_rgb
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.fidelity import psnr
from edgepipe.media.codecs import (
    CODECS,
    SETTING_RANGES,
    STILL_CODECS,
    STREAM_CODECS,
    Codec,
    QualitySetting,
    decode_image,
    encode_image,
    register_codec,
)
from edgepipe.transport.protocol import CODEC_IDS, CODEC_NAMES, QUALITY_LIMITS, WIRE_VERSION, FrameHeader


@pytest.fixture(scope="module")
def image(small_val_folder):
    return read_rgb(list_labelled_images(small_val_folder)[0].path)


def test_the_codecs_and_their_roles():
    assert CODECS.names() == ("jpeg", "jpeg2000", "jpeg2000-db", "hevc")
    assert STILL_CODECS == ("jpeg", "jpeg2000", "jpeg2000-db", "hevc")
    assert STREAM_CODECS == ("hevc", "jpeg", "jpeg2000")  # wire-id order; jpeg2000-db is a still codec only
    assert [n for n in CODECS if CODECS[n].stream_encoder is not None] == ["hevc"]  # the one inter codec
    assert SETTING_RANGES == {"jpeg": ("quality", 1, 100), "jpeg2000": ("compression x1000", 1, 1000),
                              "jpeg2000-db": ("target dB", 1, 100), "hevc": ("QP", 0, 51)}


def test_wire_ids_are_unchanged_and_agree_with_the_protocol():
    """The protocol's table is the contract with deployed monitors; the codec modules must say the same."""
    registered = {c.name: c.wire_id for c in CODECS.values() if c.wire_id is not None}
    assert registered == CODEC_IDS == {"hevc": 1, "jpeg": 2, "jpeg2000": 3}
    assert CODEC_NAMES == {1: "hevc", 2: "jpeg", 3: "jpeg2000"}
    for name in STREAM_CODECS:
        packed = FrameHeader("cam", 0, 1.0, name, 64, 48, 30, True).pack()
        assert packed[4] == CODECS[name].wire_id  # after magic (2), version, flags
        assert FrameHeader.unpack(packed).codec == name


@pytest.mark.parametrize("name", STREAM_CODECS)
def test_the_wire_carries_every_setting_of_every_codec_a_capture_sends(name):
    """Wire version 5's quality field holds each codec's whole range (and -1, CRF): version 4's i8 did not."""
    low, high = QUALITY_LIMITS[WIRE_VERSION]
    setting = CODECS[name].setting
    assert low <= -1 and low <= setting.low and setting.high <= high
    for qp in (-1, setting.low, setting.high):
        packed = FrameHeader("cam", 0, 1.0, name, 64, 48, qp, True).pack(WIRE_VERSION)
        assert FrameHeader.unpack(packed).qp == qp


@pytest.mark.parametrize("name", CODECS.names())
def test_each_codec_round_trips_through_the_registry(image, name):
    codec = CODECS[name]
    codec.check_available()
    data = codec.encode(image, codec.default_setting, 1)
    out = codec.decode(data, image.shape[1], image.shape[0])
    assert out.shape == image.shape and out.dtype == np.uint8
    assert 20 < psnr(image, out) < 60  # the picture, coded at a useful mid-range setting
    # the module-level calls dispatch to the same functions: byte for byte the same result
    assert encode_image(name, image, codec.default_setting, threads=1) == data
    np.testing.assert_array_equal(decode_image(name, data, image.shape[1], image.shape[0]), out)


@pytest.mark.parametrize("name", CODECS.names())
def test_each_description_is_consistent(name):
    codec = CODECS[name]
    low, high = codec.setting.low, codec.setting.high
    assert codec.name == name and codec.title and codec.setting.report_name
    assert low <= codec.default_setting <= high
    assert codec.caption.format(codec.default_setting) != codec.caption  # it shows the value
    if codec.still:
        assert len(codec.candidates) >= 4 and all(low <= q <= high for q in codec.candidates)
        assert len(set(codec.candidates)) == len(codec.candidates)
    if codec.crf_range is not None:
        assert codec.stream_encoder is not None  # a rate factor is a stream encoder's


def test_a_second_codec_of_a_known_name_is_refused():
    jpeg = CODECS["jpeg"]
    with pytest.raises(EdgepipeError, match="codec 'jpeg' is registered twice"):
        register_codec(Codec("jpeg", "JPEG again", QualitySetting("quality", 1, 100, "quality"), "q{}", 50,
                             jpeg.encode, jpeg.decode))
    assert CODECS["jpeg"] is jpeg


def test_unknown_codec_is_one_line_naming_the_codecs(image):
    with pytest.raises(EdgepipeError) as err:
        encode_image("webp", image, 50)
    assert str(err.value) == "unknown codec 'webp'; choose one of jpeg, jpeg2000, jpeg2000-db, hevc"
    with pytest.raises(EdgepipeError, match="unknown codec 'webp'"):
        decode_image("webp", b"\xff\xd8")
