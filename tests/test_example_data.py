"""The built-in example sets: segmentation labels beside the example images, and the synthetic
Taskonomy-layout set."""

from __future__ import annotations

import csv

import numpy as np
from PIL import Image

from attgmae.data.example import CLASSES, SEGMENTATION_CLASSES
from attgmae.data.example_taskonomy import SKY, SPLIT_BUILDINGS, TASKS, write_example_taskonomy


def test_example_labels_are_the_masks_with_class_indices(example_root):
    assert (example_root / "classes.txt").read_text().split() == list(SEGMENTATION_CLASSES)
    for split, count in (("train", 6), ("val", 3)):
        for label_index, shape in enumerate(CLASSES, start=1):
            labels = sorted((example_root / "labels" / split / shape).glob("*.png"))
            images = sorted((example_root / split / shape).glob("*.JPEG"))
            assert [p.stem for p in labels] == [p.stem for p in images] and len(labels) == count
            for path in labels[:2]:
                with Image.open(path) as img:
                    assert img.mode == "L"
                    label = np.asarray(img)
                mask = np.asarray(Image.open(example_root / "masks" / split / shape / path.name))
                assert np.array_equal(label, np.where(mask == 255, label_index, 0))
                assert (label == label_index).any()


def test_synthetic_taskonomy_files_and_splits(tmp_path):
    root = write_example_taskonomy(tmp_path / "t", views_per_building=2, size=32, seed=1)
    for split, buildings in SPLIT_BUILDINGS.items():
        with open(root / "splits" / f"{split}.csv") as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == ["building", "point", "view"]
        assert [row[0] for row in rows[1:]] == [b for b in buildings for _ in range(2)]
    building, point, view = SPLIT_BUILDINGS["train"][0], 1, 1
    with Image.open(root / building / "rgb" / f"point_{point}_view_{view}_domain_rgb.png") as img:
        assert (img.mode, img.size) == ("RGB", (32, 32))
    arrays = {}
    for task in TASKS:
        path = root / building / task / f"point_{point}_view_{view}_domain_{task}.png"
        with Image.open(path) as img:
            assert img.mode == "I;16", task
            arrays[task] = np.asarray(img).astype(np.int64)
        assert arrays[task].std() > 0, f"{task} is constant"
    # the sky (depth 65535) is a band of whole rows at the top; below it the depth is in range
    sky = arrays["depth_euclidean"] == SKY
    assert sky[0].all() and not sky[-1].any()
    assert arrays["depth_euclidean"][~sky].max() <= 8000
    assert arrays["edge_texture"].max() <= 65535 // 4 + 1  # Taskonomy's clamp range


def test_synthetic_taskonomy_is_seeded_and_has_both_layouts(tmp_path):
    a = write_example_taskonomy(tmp_path / "a", views_per_building=1, size=16, seed=3)
    b = write_example_taskonomy(
        tmp_path / "b", views_per_building=1, size=16, seed=3, per_task=True
    )
    name = "point_0_view_0_domain_keypoints2d.png"
    one = np.asarray(Image.open(a / "synth_a" / "keypoints2d" / name))
    other = np.asarray(Image.open(b / "keypoints2d" / "synth_a" / name))
    assert np.array_equal(one, other)
    c = write_example_taskonomy(tmp_path / "c", views_per_building=1, size=16, seed=4)
    assert not np.array_equal(one, np.asarray(Image.open(c / "synth_a" / "keypoints2d" / name)))
