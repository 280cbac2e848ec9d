"""Bad values of the image-data options are one line naming the field, before anything runs."""

from __future__ import annotations

import pytest

from compress.cli import main


@pytest.mark.parametrize("data, expected", [
    ({"augment": {"crop_scale": [0.8, 0.2]}}, "data.augment.crop_scale: crop_scale must be 0 < low <= high <= 1, got [0.8, 0.2]"),
    ({"augment": {"mixup": -1}}, "data.augment.mixup"),
    ({"channels": 2}, "data.channels"),
    ({"mean": [0.5], "std": [0.0]}, "give both mean and std (std positive)"),
    ({"workers": -1}, "data.workers"),
    ({"eval_resize": 0}, "data.eval_resize"),
])
def test_a_bad_image_option_is_one_line(tiny_config, write_pipeline, tmp_path, capsys, data, expected):
    (tmp_path / "images" / "a").mkdir(parents=True)
    tiny_config["data"] = {"source": "imagefolder", "path": "images", "image_size": 8, **data}
    assert main(["validate", str(write_pipeline(tiny_config))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
