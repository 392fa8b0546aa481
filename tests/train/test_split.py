"""The hold-out carved out of train: stable, disjoint, and written where eval can read it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.core.datasets import list_labelled_images, read_rgb, source_of
from edgepipe.core.errors import EdgepipeError
from edgepipe.train.data import CropBatches
from edgepipe.train.split import holdout_items, is_holdout, training_items


def test_split_is_stable_disjoint_and_near_its_fraction(imagenette_train: Path) -> None:
    items = list_labelled_images(imagenette_train)
    train, held = training_items(items, 0.05), holdout_items(items, 0.05)
    assert len(train) + len(held) == len(items)
    assert not {i.path for i in train} & {i.path for i in held}
    assert 0.04 < len(held) / len(items) < 0.06
    # membership depends on synset/name only, not on where the folder lives or what else is in it
    assert all(is_holdout(Path("/elsewhere") / i.path.parent.name / i.path.name, 0.05) for i in held)
    assert holdout_items(items[::2], 0.05) == [i for i in held if i in items[::2]]
    assert training_items(items, 0.0) == items


def test_training_batches_never_see_the_holdout(small_val_folder: Path) -> None:
    held = {i.path for i in holdout_items(list_labelled_images(small_val_folder), 0.3)}
    assert held  # the small folder must have some at 30 %
    batches = CropBatches(small_val_folder, crop=32, batch_size=2, holdout=0.3)
    assert not held & {i.path for i in batches.items}


def test_rescaled_crops_are_deterministic(small_val_folder: Path) -> None:
    a = CropBatches(small_val_folder, crop=64, batch_size=4, rescale_min=0.6).batch(0, 1)[0]
    b = CropBatches(small_val_folder, crop=64, batch_size=4, rescale_min=0.6).batch(0, 1)[0]
    plain = CropBatches(small_val_folder, crop=64, batch_size=4).batch(0, 1)[0]
    np.testing.assert_array_equal(a, b)
    assert a.shape == plain.shape and not np.array_equal(a, plain)


def test_holdout_command_writes_links_and_washed_pngs(small_val_folder: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["holdout", "--data", str(small_val_folder), "--out", str(tmp_path / "h"),
                              "--fraction", "0.3"])
    assert res.exit_code == 0, res.output
    links = list_labelled_images(tmp_path / "h")
    expected = holdout_items(list_labelled_images(small_val_folder), 0.3)
    assert [i.path.name for i in links] == [i.path.name for i in expected]
    res = runner.invoke(cli, ["holdout", "--data", str(small_val_folder), "--out", str(tmp_path / "w"),
                              "--fraction", "0.3", "--washed", "160"])
    assert res.exit_code == 0, res.output
    washed = list_labelled_images(tmp_path / "w")
    assert len(washed) == len(expected) and all(i.path.suffix == ".png" for i in washed)
    assert read_rgb(washed[0].path).shape == (160, 160, 3)
    again = runner.invoke(cli, ["holdout", "--data", str(small_val_folder), "--out", str(tmp_path / "w")])
    assert again.exit_code != 0 and "not empty" in again.output and "Traceback" not in again.output


def test_several_washed_sizes_write_every_image_at_each_as_views_of_one_photo(small_val_folder: Path,
                                                                              tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["holdout", "--data", str(small_val_folder), "--out", str(tmp_path / "v"),
                                   "--fraction", "0.3", "--washed", "144,160"])
    assert res.exit_code == 0, res.output
    expected = holdout_items(list_labelled_images(small_val_folder), 0.3)
    views = list_labelled_images(tmp_path / "v")
    assert len(views) == 2 * len(expected) and f"{len(views)} images written" in res.output
    by_photo: dict[str, list[tuple[int, int]]] = {}
    for v in views:
        by_photo.setdefault(source_of(v.path), []).append(read_rgb(v.path).shape[:2])
    assert sorted(by_photo) == sorted(source_of(i.path) for i in expected)
    assert all(sorted(shapes) == [(144, 144), (160, 160)] for shapes in by_photo.values())
    assert {v.path.stem.split("@")[1] for v in views} == {"144", "160"}


def test_holdout_refuses_a_file_and_a_tiny_washed_size(small_val_folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    for extra in ([], ["--washed", "0"], ["--washed", "160,x"], ["--washed", "160,160"]):
        out = target if not extra else tmp_path / "new"
        res = CliRunner().invoke(cli, ["holdout", "--data", str(small_val_folder), "--out", str(out),
                                       "--fraction", "0.3", *extra])
        assert res.exit_code != 0 and "Traceback" not in res.output and res.output.startswith("Error:")
    assert target.read_text() == "x" and not (tmp_path / "new").exists()


def test_rescale_range_is_what_each_crop_draws(small_val_folder: Path, monkeypatch) -> None:
    """--rescale-min/--rescale-max bound every crop's area downscale; equal ends give one fixed scale."""
    from edgepipe.train import data

    seen: list[float] = []
    real = data.area_rescale
    monkeypatch.setattr(data, "area_rescale", lambda image, scale: seen.append(scale) or real(image, scale))
    CropBatches(small_val_folder, crop=48, batch_size=4, rescale_min=0.5, rescale_max=0.7).batch(0, 0)
    assert len(seen) == 4 and all(0.5 <= s <= 0.7 for s in seen) and len(set(seen)) == 4
    seen.clear()
    crops = CropBatches(small_val_folder, crop=48, batch_size=4, rescale_min=0.6, rescale_max=0.6).batch(0, 0)[0]
    assert seen == [0.6] * 4 and crops.shape == (4, 48, 48, 3)
    # the default range is unchanged: the same crops as before --rescale-max existed
    a = CropBatches(small_val_folder, crop=64, batch_size=4, rescale_min=0.6).batch(0, 1)[0]
    b = CropBatches(small_val_folder, crop=64, batch_size=4, rescale_min=0.6, rescale_max=1.0).batch(0, 1)[0]
    np.testing.assert_array_equal(a, b)
    for lo, hi in ((0.7, 0.6), (0.6, 1.2), (1.0, 0.9)):
        with pytest.raises(EdgepipeError, match="--rescale-max"):
            CropBatches(small_val_folder, crop=48, batch_size=4, rescale_min=lo, rescale_max=hi)
