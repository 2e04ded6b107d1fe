"""Evaluation figures: k-NN against k with the k values as plain ticks, probe and fine-tuning
curves; each on a fixed accuracy scale, in viridis, titled with what it shows, and rendered."""

from __future__ import annotations

import pytest
from matplotlib import colormaps
from PIL import Image

from attgmae.eval.report import (
    ACCURACY_LIMITS,
    finetune_figure,
    knn_figure,
    plot_finetune,
    plot_knn,
    plot_probe,
    probe_figure,
)

KS = [5, 10, 20, 100, 200]
KNN = {
    "guided": dict(zip(KS, [(61.0, 80.5), (62.5, 82.0), (63.0, 83.0), (60.0, 84.0), (58.0, 84.5)])),
    "vanilla": dict(
        zip(KS, [(55.0, 75.0), (56.0, 77.0), (57.0, 78.0), (55.5, 79.0), (54.0, 79.5)])
    ),
}


def _is_png(path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and image.width > 100 and image.height > 100


def test_knn_axis_shows_the_k_values_as_plain_ticks():
    fig = knn_figure(KNN, temperature=0.07)
    ax = fig.axes[0]
    fig.canvas.draw()  # tick labels are filled in when drawn
    assert ax.get_xscale() == "log"
    assert list(ax.get_xticks()) == KS
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5", "10", "20", "100", "200"]
    assert ax.get_xticks(minor=True).size == 0  # no minor ticks between them
    assert ax.get_ylim() == ACCURACY_LIMITS and list(ax.get_yticks()) == [0, 20, 40, 60, 80, 100]
    title = fig.get_suptitle()
    assert "k-NN" in title and "DINO" in title and "T = 0.07" in title
    assert "guided" in title and "vanilla" in title
    lines = ax.get_lines()
    assert len(lines) == 4 and lines[0].get_ydata().tolist() == [61.0, 62.5, 63.0, 60.0, 58.0]
    assert lines[0].get_color() == lines[1].get_color() == colormaps["viridis"](0.0)
    assert lines[2].get_color() != lines[0].get_color()


def test_knn_draws_the_chance_level_and_keeps_curves_off_the_frame():
    perfect = {"perfect": {k: (100.0, 100.0) for k in KS}}
    fig = knn_figure(perfect, temperature=0.07, chance=25.0)
    ax = fig.axes[0]
    chance = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == [25.0, 25.0]
    assert "chance (25%)" in [t.get_text() for t in ax.get_legend().get_texts()]
    low, high = ax.get_ylim()
    assert low < 0 and high > 100  # a curve at 0 or 100 % is drawn inside the frame
    assert all(line.get_linestyle() != ":" for line in knn_figure(KNN).axes[0].get_lines())


def test_probe_and_finetune_figures_keep_their_titles_and_scale():
    fig = probe_figure({"seed 0": [10.0, 20.0, 25.0], "seed 1": [12.0, 18.0]}, "Linear probe x")
    assert fig.get_suptitle() == "Linear probe x" and fig.axes[0].get_ylim() == ACCURACY_LIMITS
    assert [line.get_ydata().tolist() for line in fig.axes[0].get_lines()] == [
        [10.0, 20.0, 25.0],
        [12.0, 18.0],
    ]
    history = [
        {"epoch": e, "train_loss": 2.0 - e / 10, "test_acc1": 30.0 + e, "test_acc5": 60.0 + e,
         "test_loss": 2.1 - e / 10}
        for e in range(3)
    ]  # fmt: skip
    fig = finetune_figure(history, "fine-tuning: run")
    acc_ax, loss_ax = fig.axes
    assert fig.get_suptitle() == "fine-tuning: run" and acc_ax.get_ylim() == ACCURACY_LIMITS
    assert "top-1" in acc_ax.get_title() and "loss" in loss_ax.get_title()
    assert acc_ax.get_lines()[1].get_ydata().tolist() == [60.0, 61.0, 62.0]


@pytest.mark.parametrize("kind", ["knn", "probe", "finetune"])
def test_each_figure_renders_to_a_png(tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "knn":
        plot_knn({"guided": KNN["guided"]}, path, temperature=0.07)
    elif kind == "probe":
        plot_probe({"seed 0": [1.0, 2.0]}, path, "Linear probe of c.pth: val top-1 per epoch")
    else:
        plot_finetune([{"epoch": 0, "train_loss": 1.0, "test_acc1": 5.0}], path, "fine-tuning")
    assert path.stat().st_size > 0 and _is_png(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
