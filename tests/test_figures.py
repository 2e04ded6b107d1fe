"""The paper's figures: maps as their 14x14 patch grids in viridis, one fixed scale per figure,
titles that say what is shown; each renders through the command a user runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from attgmae.cli.maps import main as maps_main
from attgmae.figures import compare_figure, tau_figure, weight_figure

IMAGE = np.zeros((120, 160, 3), np.uint8)
RAMP = np.tile(np.linspace(0, 1, 14, dtype=np.float32), (14, 1))


def _map_images(fig):
    """Every map panel's AxesImage (14 x 14 data), in drawing order."""
    return [im for ax in fig.axes for im in ax.get_images() if im.get_array().shape == (14, 14)]


def test_figure_1_draws_patch_grids_on_one_scale():
    fig = weight_figure([IMAGE, IMAGE], np.stack([RAMP, RAMP]), ["a.JPEG", "b.JPEG"], 0.75,
                        "truth maps of t.zarr at tau 0.75")  # fmt: skip
    maps = _map_images(fig)
    assert len(maps) == 6  # 2 rows x (M_norm, M_norm / tau, exp(M_norm / tau))
    top = np.exp(1 / 0.75)
    for image in maps:
        assert image.get_clim() == pytest.approx((0.0, top))  # one scale for the whole figure
        assert image.get_interpolation() == "nearest" and image.get_cmap().name == "viridis"
        assert image.get_extent() == [0, 160, 120, 0]  # over the image's extent, not 14 x 14
    np.testing.assert_allclose(maps[2].get_array(), np.exp(RAMP / 0.75), rtol=1e-6)
    assert "tau 0.75" in fig.get_suptitle() and "truth" in fig.get_suptitle()


def test_figures_2_and_3_share_the_scale_of_the_smallest_tau():
    taus = [0.5, 0.7, 0.75, 1.0]
    fig = tau_figure([IMAGE], RAMP[None], ["a.JPEG"], taus, "weights at several tau")
    maps = _map_images(fig)
    assert len(maps) == 4 and all(
        image.get_clim() == pytest.approx((1.0, np.exp(2.0))) for image in maps
    )
    np.testing.assert_allclose(maps[1].get_array(), np.exp(RAMP / 0.7), rtol=1e-6)


def test_figure_4_puts_each_store_beside_the_image():
    notes = [None, "failed"]
    fig = compare_figure([IMAGE, IMAGE], ["a", "b"], [("dino", np.stack([RAMP, RAMP]), notes)],
                         "M_norm of 1 store")  # fmt: skip
    maps = _map_images(fig)
    assert len(maps) == 1 and maps[0].get_clim() == (0.0, 1.0)  # the failed row shows a note
    overlay = compare_figure([IMAGE], ["a"], [("dino", RAMP[None], [None])], "t", overlay=True)
    assert _map_images(overlay)[0].get_alpha() == pytest.approx(0.6)


def test_show_renders_figures_1_2_and_3(make_truth_example, tmp_path):
    root, maps = make_truth_example(tmp_path, 2, 1)
    keys = ["circle/circle_0000.JPEG", "cross/cross_0001.JPEG"]
    base = ["show", str(maps), "--images", str(root / "train"), "--keys", *keys]
    widths = {}
    for name, extra in {
        "fig1": ["--tau", "0.75"],
        "fig2": ["--tau", "0.5", "0.7", "0.75", "1.0"],
    }.items():
        assert maps_main([*base, *extra, "-o", str(tmp_path / f"{name}.png")]) == 0
        widths[name] = Image.open(tmp_path / f"{name}.png").size[0]
    assert widths["fig2"] > widths["fig1"]  # 4 tau columns against 3 map columns
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"tau_plan": {"start": 1.0, "end": 0.7, "from_epoch": 0.0,
                                               "to_epoch": 800}}))  # fmt: skip
    assert maps_main([*base, "--schedule", str(config), "-o", str(tmp_path / "fig3.png")]) == 0
    assert Image.open(tmp_path / "fig3.png").size[0] > widths["fig1"]
