"""Dense datasets: segmentation layouts (ADE20k, NYUv2, folder), label reading, the joint
transforms, and Taskonomy's layouts, normalizations and valid mask."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from attgmae.core.errors import InputError
from attgmae.data.dense_datasets import (
    SegmentationDataset,
    read_label_map,
    segmentation_split,
    to_train_ids,
)
from attgmae.data.dense_recipes import recipe_for
from attgmae.data.dense_taskonomy import (
    TASKONOMY_TASKS,
    TaskonomyDataset,
    erode_valid,
    normalize_target,
    resolve_tasks,
)
from attgmae.data.dense_transforms import SegmentationTransform
from attgmae.data.example import CLASSES
from attgmae.data.example_taskonomy import write_example_taskonomy


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


# ---- segmentation --------------------------------------------------------------------------


def test_folder_layout_reads_the_example_set(example_root):
    split = segmentation_split("folder", example_root, "val")
    assert split.class_names == ("background", *CLASSES)
    assert len(split) == 3 * len(CLASSES)
    dataset = SegmentationDataset(split, SegmentationTransform(160, train=False))
    index = split.image_paths.index(example_root / "val/square/square_0001.JPEG")
    sample = dataset[index]
    assert dataset.key(index) == "square/square_0001.JPEG"
    assert sample["image"].shape == (3, 160, 160) and sample["image"].dtype == torch.uint8
    mask = np.asarray(Image.open(example_root / "masks/val/square/square_0001.png"))
    want = np.full((160, 160), 255)  # 160 x 120 already fits: padding below is ignored
    want[:120] = np.where(mask > 0, 2, 0)  # square is class 2 (background 0)
    assert np.array_equal(sample["label"].numpy(), want)
    assert (sample["image"][:, 120:] == 128).all()  # MultiMAE's grey padding


def test_folder_layout_needs_a_class_count(tmp_path):
    save(tmp_path / "train/a.png", np.zeros((4, 4, 3), np.uint8))
    save(tmp_path / "labels/train/a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="num_classes"):
        segmentation_split("folder", tmp_path, "train")
    assert segmentation_split("folder", tmp_path, "train", num_classes=3).num_classes == 3


def test_ade20k_layout_reduces_the_zero_label(tmp_path):
    ade = tmp_path / "ADEChallengeData2016"
    stored = np.array([[0, 1], [150, 255]], np.uint8)
    for split, folder in (("train", "training"), ("val", "validation")):
        save(ade / f"images/{folder}/ADE_{split}_1.jpg", np.full((2, 2, 3), 90, np.uint8))
        save(ade / f"annotations/{folder}/ADE_{split}_1.png", stored)
    split = segmentation_split("ade20k", tmp_path, "val")
    assert split.num_classes == 150 and split.reduce_zero_label
    sample = SegmentationDataset(split, SegmentationTransform(2, train=False))[0]
    assert sample["label"].tolist() == [[255, 0], [149, 255]]
    assert len(segmentation_split("ade20k", ade, "train")) == 1  # root may be the folder itself


def test_nyuv2_layout_reads_palette_indices_and_val_is_test(tmp_path):
    save(tmp_path / "test/rgb/data/0001.png", np.zeros((3, 3, 3), np.uint8))
    label = Image.fromarray(np.array([[0, 1, 40]] * 3, np.uint8), mode="P")
    label.putpalette([200, 10, 10] * 256)  # colours unlike the indices
    (tmp_path / "test/semseg/data").mkdir(parents=True)
    label.save(tmp_path / "test/semseg/data/0001.png")
    split = segmentation_split("nyuv2", tmp_path, "val")
    assert split.num_classes == 40
    assert read_label_map(split.label_paths[0])[0].tolist() == [0, 1, 40]
    sample = SegmentationDataset(split, SegmentationTransform(3, train=False))[0]
    assert sample["label"][0].tolist() == [255, 0, 39]


def test_train_ids_and_their_errors():
    stored = np.array([0, 1, 3, 255])
    assert to_train_ids(stored, 3, True).tolist() == [255, 0, 2, 255]
    assert to_train_ids(stored, 4, False).tolist() == [0, 1, 3, 255]
    with pytest.raises(InputError, match=r"lab\.png: label value 3 is not one of the 3"):
        to_train_ids(stored, 3, False, "lab.png")


def test_bad_files_are_named(tmp_path):
    save(tmp_path / "train/a.png", np.zeros((4, 4, 3), np.uint8))
    save(tmp_path / "train/b.png", np.zeros((4, 4, 3), np.uint8))
    save(tmp_path / "labels/train/a.png", np.zeros((4, 4, 3), np.uint8))  # RGB: not indices
    with pytest.raises(InputError, match="no label map.*labels/train/b.png"):
        segmentation_split("folder", tmp_path, "train", num_classes=2)
    save(tmp_path / "labels/train/b.png", np.zeros((5, 4), np.uint8))  # wrong size
    dataset = SegmentationDataset(
        segmentation_split("folder", tmp_path, "train", num_classes=2),
        SegmentationTransform(4, train=False),
    )
    with pytest.raises(InputError, match=r"labels/train/a.png: .*mode RGB"):
        dataset[0]
    with pytest.raises(InputError, match=r"labels/train/b.png: label map is 4x5 .* 4x4"):
        dataset[1]
    (tmp_path / "train/b.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="train/b.png"):
        dataset[1]


def colour_coded(height=48, width=64, seed=0):
    """An image whose grey level is 40 x its class + 20 (4 classes in 16-pixel blocks), and its
    label map."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 4, (height // 16, width // 16)).repeat(16, 0).repeat(16, 1)
    image = np.repeat((40 * label + 20)[..., None], 3, axis=2).astype(np.uint8)
    return image, label.astype(np.uint8)


@pytest.mark.parametrize("seed", range(4))
def test_training_transform_keeps_labels_on_their_pixels(seed):
    image, label = colour_coded()
    # scales that keep the blocks several pixels wide: geometry, not blur, is under test
    transform = SegmentationTransform(40, train=True, scale_range=(0.75, 1.5), jitter_p=0.0)
    img, lab = transform(image, label, np.random.default_rng(seed))
    assert img.shape == (3, 40, 40) and lab.shape == (40, 40)
    grey, lab = img[0].long(), lab.long()
    # away from class borders (one class in the 5 x 5 neighbourhood) the pixel shows its class
    neighbours = lab[None, None].float()
    top = torch.nn.functional.max_pool2d(neighbours, 5, stride=1, padding=2)[0, 0]
    bottom = -torch.nn.functional.max_pool2d(-neighbours, 5, stride=1, padding=2)[0, 0]
    interior = (top == bottom) & (lab != 255)
    assert interior.sum() > 100
    assert ((grey - 20 - 40 * lab)[interior].abs() <= 2).all()
    assert (grey[lab == 255] == 128).all()  # everything ignored is padding


def test_evaluation_resizes_as_albumentations_opencv():
    """MultiMAE's LongestMaxSize: OpenCV bilinear without antialiasing for the image, OpenCV
    nearest (the top-left source pixel of each cell) for the labels; hand-computed 4 -> 2."""
    image = np.repeat(np.array([[0, 100, 200, 250]], np.uint8)[..., None], 3, axis=2)
    image = np.repeat(image, 4, axis=0)  # [4, 4, 3]: columns 0, 100, 200, 250
    label = np.tile(np.arange(4, dtype=np.uint8), (4, 1))  # column index
    img, lab = SegmentationTransform(2, train=False)(image, label, None)
    assert img[0].tolist() == [[50, 225], [50, 225]]  # antialiased would mix 3-4 columns
    assert lab.tolist() == [[0, 2], [0, 2]]  # pixel centres would give columns 1 and 3


def test_samples_are_pure_functions_of_the_rng_state(example_root):
    """The engine's SeededSamples seeds numpy's global RNG per (seed, epoch, index)."""
    split = segmentation_split("folder", example_root, "train")
    dataset = SegmentationDataset(split, SegmentationTransform(64, train=True))
    np.random.seed(11)
    first = dataset[5]
    np.random.seed(11)
    again = dataset[5]
    assert torch.equal(first["image"], again["image"])
    assert torch.equal(first["label"], again["label"])
    np.random.seed(12)
    assert not torch.equal(first["image"], dataset[5]["image"])  # another seed, another crop
    same = dataset.sample(5, np.random.default_rng(3))
    assert torch.equal(same["label"], dataset.sample(5, np.random.default_rng(3))["label"])


def test_recipes_hold_the_paper_and_multimae_settings():
    ade = recipe_for("ade20k")
    assert (ade.input_size, ade.total_batch_size, ade.lr, ade.epochs, ade.warmup_epochs) == (
        512,
        16,
        3e-4,
        64,
        3,
    )
    assert (ade.layer_decay, ade.weight_decay, ade.drop_path) == (0.75, 0.05, 0.1)
    assert recipe_for("nyuv2").input_size == 640
    assert recipe_for("taskonomy").total_batch_size == 8
    assert recipe_for("ade20k", lr=1e-4, epochs=None).lr == 1e-4


# ---- Taskonomy -----------------------------------------------------------------------------

TASKS = ["depth", "edges", "keypoints2d", "keypoints3d", "occlusion"]


@pytest.fixture(scope="module")
def taskonomy_root(tmp_path_factory):
    return write_example_taskonomy(tmp_path_factory.mktemp("taskonomy"), views_per_building=3)


def test_taskonomy_reads_both_layouts_alike(taskonomy_root, tmp_path):
    per_task = write_example_taskonomy(tmp_path / "per_task", views_per_building=3, per_task=True)
    a = TaskonomyDataset(taskonomy_root, "train", TASKS, input_size=32)
    b = TaskonomyDataset(per_task, "train", TASKS, input_size=32)
    assert len(a) == len(b) == 6 and a.mask_task == "depth_euclidean"
    for x, y in ((a[4], b[4]), (a[0], b[0])):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        for task in a.tasks:
            assert torch.equal(x["targets"][task], y["targets"][task])
    sample = a[0]
    assert sample["image"].shape == (3, 32, 32) and sample["mask"].shape == (1, 32, 32)
    assert set(sample["targets"]) == {
        "depth_euclidean",
        "edge_texture",
        "keypoints2d",
        "keypoints3d",
        "edge_occlusion",
    }
    assert not sample["mask"].all() and sample["mask"].any()  # the sky is invalid


def test_target_normalizations():
    raw = torch.tensor([[[0, 4000, 8000, 20000, 65535]]])
    depth = normalize_target(raw, TASKONOMY_TASKS["depth_euclidean"])
    assert torch.allclose(depth, torch.tensor([[[0.0, 0.5, 1.0, 1.0, 1.0]]]))
    raw = torch.tensor([[[0, 65535 // 8, 65535 // 4, 65535]]])
    edges = normalize_target(raw, TASKONOMY_TASKS["edge_texture"])
    assert torch.allclose(edges, torch.tensor([[[0.0, 0.5, 1.0, 1.0]]]), atol=1e-4)
    keypoints = normalize_target(torch.tensor([[[65535, 0]]]), TASKONOMY_TASKS["keypoints2d"])
    assert keypoints.tolist() == [[[1.0, 0.0]]]
    spike = torch.zeros(1, 5, 5, dtype=torch.int32)
    spike[0, 2, 2] = 65535
    blurred = normalize_target(spike, TASKONOMY_TASKS["edge_occlusion"])
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5) and blurred[0, 2, 2] < 0.5


def test_valid_mask_drops_every_4x4_cell_with_an_invalid_pixel():
    valid = torch.ones(1, 8, 10, dtype=torch.bool)
    valid[0, 5, 1] = False
    got = erode_valid(valid)
    want = torch.ones(1, 8, 10, dtype=torch.bool)
    want[0, 4:8, 0:4] = False  # the cell of the invalid pixel
    want[0, :, 8:] = False  # columns 8-9 make no whole cell
    assert torch.equal(got, want)


def test_depth_file_values_reach_the_target_and_the_mask(tmp_path):
    root = write_example_taskonomy(tmp_path / "t", views_per_building=1, size=32)
    depth_path = root / "synth_c/depth_euclidean/point_0_view_0_domain_depth_euclidean.png"
    raw = np.zeros((32, 32), np.uint16) + 4000
    raw[:8] = 65535  # two rows of 4 x 4 cells with no surface
    Image.fromarray(raw).save(depth_path)
    sample = TaskonomyDataset(root, "val", ["depth"], input_size=32)[0]
    assert torch.equal(sample["mask"][0, :8], torch.zeros(8, 32, dtype=torch.bool))
    assert sample["mask"][0, 8:].all()
    assert torch.allclose(sample["targets"]["depth_euclidean"][0, 8:], torch.tensor(0.5))


def test_a_mask_valid_folder_replaces_the_depth_mask(tmp_path):
    root = write_example_taskonomy(tmp_path / "t", views_per_building=1, size=16)
    mask = np.full((16, 16), 255, np.uint8)
    mask[12:, 12:] = 0  # MultiMAE's files: 0 invalid, 255 valid, named after depth_zbuffer
    mask[:4, :4] = 128  # not full scale: invalid for MultiMAE (1 - 128 / 255 != 0)
    save(root / "synth_c/mask_valid/point_0_view_0_domain_depth_zbuffer.png", mask)
    dataset = TaskonomyDataset(root, "val", ["keypoints2d"], input_size=16)
    assert dataset.mask_task == "mask_valid"
    assert torch.equal(dataset[0]["mask"][0], torch.from_numpy(mask == 255))


def test_splits_from_the_tiny_buildings_without_a_csv(taskonomy_root, tmp_path):
    root = tmp_path / "t"
    shutil.copytree(taskonomy_root, root)
    shutil.rmtree(root / "splits")
    (root / "synth_c").rename(root / "darden")  # a tiny-split val building
    assert {k[0] for k in TaskonomyDataset(root, "val", ["depth"], 16).keys} == {"darden"}
    train = TaskonomyDataset(root, "train", ["depth"], 16, max_images=4, seed=1)
    assert len(train) == 4 and {k[0] for k in train.keys} <= {"synth_a", "synth_b", "synth_d"}


def test_missing_files_and_unknown_tasks_are_named(taskonomy_root, tmp_path):
    root = tmp_path / "t"
    shutil.copytree(taskonomy_root, root)
    (root / "synth_a/keypoints3d/point_1_view_1_domain_keypoints3d.png").unlink()
    with pytest.raises(InputError, match="point_1_view_1_domain_keypoints3d.png"):
        TaskonomyDataset(root, "train", TASKS, 16)
    with pytest.raises(InputError, match="unknown Taskonomy task"):
        resolve_tasks(["depth", "normals"])
    (root / "synth_c/edge_texture/point_0_view_0_domain_edge_texture.png").unlink()
    eight_bit = np.zeros((64, 64), np.uint8)
    save(root / "synth_c/edge_texture/point_0_view_0_domain_edge_texture.png", eight_bit)
    with pytest.raises(InputError, match="edge_texture.png: expected a 16-bit"):
        TaskonomyDataset(root, "val", ["edges"], 16)[0]
