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


def test_figure_2_keeps_the_papers_scale_whatever_the_taus():
    """Supplementary Fig. 2: 1.0 (dark blue) .. 4.2 (bright yellow), the range at tau 0.7; a
    smaller tau reaches beyond it (the colour bar's arrow), it does not stretch the scale."""
    taus = [0.5, 0.7, 0.75, 1.0]
    fig = tau_figure([IMAGE], RAMP[None], ["a.JPEG"], taus, "weights at several tau")
    maps = _map_images(fig)
    assert len(maps) == 4
    assert all(image.get_clim() == pytest.approx((1.0, 4.17), abs=0.01) for image in maps)
    np.testing.assert_allclose(maps[1].get_array(), np.exp(RAMP / 0.7), rtol=1e-6)
    bar = fig.axes[-1]
    assert bar.get_label() == "<colorbar>" and "4.17" in bar.get_ylabel()
    assert maps[-1].colorbar.extend == "max"  # tau 0.5 reaches 7.39, beyond the scale
    inside = tau_figure([IMAGE], RAMP[None], ["a.JPEG"], [0.7, 1.0], "t")
    assert _map_images(inside)[-1].colorbar.extend == "neither"
    fixed = tau_figure([IMAGE], RAMP[None], ["a.JPEG"], [0.7], "t", value_range=(1.0, 8.0))
    assert _map_images(fixed)[0].get_clim() == (1.0, 8.0)
    with pytest.raises(ValueError, match="tau must be > 0"):
        tau_figure([IMAGE], RAMP[None], ["a.JPEG"], [0.7, 0.0], "t")


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


def test_show_refuses_a_tau_that_is_not_positive(make_truth_example, tmp_path, capsys):
    root, maps = make_truth_example(tmp_path, 1, 1)
    base = ["show", str(maps), "--images", str(root / "train"), "--keys",
            "circle/circle_0000.JPEG", "-o", str(tmp_path / "x.png")]  # fmt: skip
    for taus in (["0"], ["0.7", "-1"]):
        assert maps_main([*base, "--tau", *taus]) == 2
        assert "--tau must be > 0" in capsys.readouterr().err
    assert maps_main([*base, "--range", "2", "1"]) == 2
    assert "--range LOW HIGH must rise" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_figure_3_labels_epochs_the_run_has_and_says_its_tau(make_truth_example, tmp_path):
    from attgmae.pipelines.show import schedule_epochs, show_figure

    assert schedule_epochs(800) == [0, 200, 400, 599, 799] and schedule_epochs(3) == [0, 1, 2]
    root, maps = make_truth_example(tmp_path, 1, 1)
    config = tmp_path / "config.json"  # what attg-train records: the plan and the epochs
    config.write_text(
        json.dumps(
            {"epochs": 8, "tau_plan": {"start": 1.0, "end": 0.7, "from_epoch": 0.0, "to_epoch": 8}}
        )
    )
    keys = ["circle/circle_0000.JPEG"]
    fig = show_figure(maps, root / "train", keys, [0.75], schedule=config)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("epoch")]
    assert [t.split(":")[0] for t in titles] == ["epoch 0", "epoch 2", "epoch 4", "epoch 5",
                                                 "epoch 7"]  # fmt: skip
    assert titles[0] == "epoch 0: tau 1.000" and "at the start of epochs" in fig.get_suptitle()
    assert _map_images(fig)[0].get_clim() == pytest.approx((1.0, np.exp(1 / 0.7)))
    constant = tmp_path / "constant.json"  # a constant plan: the epochs from the config
    constant.write_text(json.dumps({"epochs": 400, "tau_plan": {"start": 0.75, "end": None}}))
    fig = show_figure(maps, root / "train", keys, [0.75], schedule=constant)
    assert "epoch 399: tau 0.750" in [ax.get_title() for ax in fig.axes]
    fixed = show_figure(maps, root / "train", keys, [0.7, 1.0], value_range=(1.0, 3.0))
    assert all(image.get_clim() == (1.0, 3.0) for image in _map_images(fixed))


def test_compare_columns_name_the_store_when_methods_repeat_and_say_random_weights():
    from types import SimpleNamespace

    from attgmae.pipelines.compare import column_titles

    def store(path, method, random=False):
        return SimpleNamespace(path=path, method=method, attrs={"random_weights": random})

    titles = column_titles([store("a/tokencut.zarr", "tokencut"), store("b/tokencut.zarr",
                            "tokencut"), store("maps/dino.zarr", "dino", random=True),
                            store("x/mine.h5", "gradcam")])  # fmt: skip
    assert titles == ["tokencut (a/tokencut.zarr)", "tokencut (b/tokencut.zarr)",
                      "dino\nrandom weights", "gradcam (mine.h5)"]  # fmt: skip


def test_reconstruction_pngs_keep_one_weight_scale_with_its_key_and_the_image_keys():
    from types import SimpleNamespace

    from attgmae.guidance import TauSchedule
    from attgmae.pipelines.train_vis import weight_scale
    from attgmae.visualize import with_colorbar, with_row_keys

    def run(plan, gamma=1.0):
        return SimpleNamespace(tau_schedule=plan, cfg=SimpleNamespace(gamma=gamma))

    # the run's sharpest tau sets the scale of every epoch's PNG (not that epoch's tau)
    assert weight_scale(run(TauSchedule(1.0, 0.7, 0.0, 800))) == pytest.approx((1, np.exp(1 / 0.7)))
    assert weight_scale(run(TauSchedule(0.75), 2.0)) == pytest.approx((2, 2 * np.exp(1 / 0.75)))
    panel = np.full((2 * 64, 4 * 64, 3), 128, np.uint8)
    keyed = with_row_keys(panel, ["circle/circle_0000.JPEG", "b.JPEG"], 64)
    for row in (0, 1):
        band = keyed[(row + 1) * 64 - 13 : (row + 1) * 64, :64]
        assert (band == 0).mean() > 0.5 and (band > 200).any()  # light text on a dark band
    assert np.array_equal(keyed[:, 64:], panel[:, 64:]) and (panel == 128).all()
    bar = with_colorbar(panel, 1.0, 4.17, "loss weight")
    assert bar.shape == (128 + 32, 256, 3) and np.array_equal(bar[:128], panel)
    gradient = bar[128 + 5, 192 + 4 : 256 - 4]  # under the weights' column
    assert gradient[0].tolist() == [68, 1, 84] and gradient[-1][0] > 200  # viridis, dark to yellow
