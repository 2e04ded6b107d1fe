"""`attg-maps generate`: the stores hold each method's definition, computed the slow way, per key.

One small run (8 example images, random weights, chunks of 4 rows, batches of 3 so batches and
chunks do not line up, TokenCut in a 2-process pool) is shared by the module; the other tests are
cheap variations.

Random-weight DINO keys are all alike (cosine similarity mostly > 0.5), so at tau = 0.2 TokenCut's
graph is complete and its Fiedler vector is not unique (eigenvalue 1 with multiplicity 195): any
solver may return any vector. tau = 0.9 keeps ~25% of the edges and a well-separated eigenvalue,
where the stored maps must equal scipy's generalized solve.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attgmae.cli.maps import main
from attgmae.core.listing import folder_labels, list_images
from attgmae.data.images import decode_rgb
from attgmae.pipelines.generate_loop import plan_batches
from attgmae.store import open_store

ALL = ("dino", "tokencut", "gradcam", "random")
TAU = 0.9  # see the module docstring


def write_file_list(path, keys):
    path.write_text("".join(f"{k}\n" for k in keys))
    return path


@pytest.fixture(scope="module")
def small_set(example_root, tmp_path_factory):
    """(images root, file list, keys): 2 training images per class."""
    root = example_root / "train"
    keys = [k for k in list_images(root) if k.rsplit("_", 1)[1].startswith(("0000", "0001"))]
    assert len(keys) == 8
    return root, write_file_list(tmp_path_factory.mktemp("lists") / "small.txt", keys), keys


@pytest.fixture(scope="module")
def generated(small_set, tmp_path_factory):
    root, file_list, keys = small_set
    out = tmp_path_factory.mktemp("gen") / "maps"
    code = main([
        "generate", str(root), "--out", str(out), "--file_list", str(file_list),
        "--methods", ",".join(ALL), "--random_weights", "--device", "cpu", "--batch_size", "3",
        "--num_workers", "1", "--chunk_rows", "4", "--shard_rows", "4", "--no_progress",
        "--tokencut_tau", str(TAU), "--tokencut_workers", "2",
    ])
    assert code == 0
    return out


def test_plan_batches_cut_inside_chunks():
    plan = plan_batches([(0, 0, 4), (2, 8, 11)], batch_size=3)
    assert [(c, r.tolist()) for c, r in plan] == [
        (0, [0, 1, 2]), (0, [3]), (2, [8, 9, 10]),
    ]


def test_stores_match_the_definitions_computed_the_slow_way(generated, small_set):
    from attgmae.data.map_inputs import to_model_input
    from attgmae.maps.dino import dino_maps_reference, dino_outputs
    from attgmae.maps.gradcam import gradcam_maps_reference
    from attgmae.maps.random_map import keyed_random_maps
    from attgmae.maps.tokencut import tokencut_maps_reference
    from attgmae.models.backbones import load_dino_vit, load_resnet50

    root, _, all_keys = small_set
    keys = [all_keys[i] for i in (0, 3, 4, 7)]  # both ends of both chunks (the slow way is slow)
    x = to_model_input([decode_rgb(root / k) for k in keys])  # [4, 3, 224, 224]
    with pytest.warns(UserWarning):
        vit, _ = load_dino_vit(random_weights=True)
        resnet, _ = load_resnet50(random_weights=True)
    with torch.no_grad():
        _, patch_keys = dino_outputs(vit, x)
    expected = {
        # explicit fp32 softmax(q k^T / sqrt(d)) per image, CLS row, mean over heads
        "dino": dino_maps_reference(vit, x).numpy(),
        # scipy.linalg.eigh(D - A, D, subset_by_index=[1, 2]) per image
        "tokencut": tokencut_maps_reference(patch_keys, threshold=TAU),
        # pytorch-grad-cam's GradCAM on layer4[-1], top-1 target, INTER_AREA to 14x14
        "gradcam": gradcam_maps_reference(resnet, x),
        "random": keyed_random_maps(keys, 0),
    }
    # float16 storage: half a unit in the last place is < 5e-4 on [0, 1]
    tolerance = {"dino": 1e-3, "tokencut": 1e-3, "gradcam": 1e-2, "random": 1e-3}
    for method in ALL:
        store = open_store(generated / f"{method}.zarr")
        assert list(store.keys) == all_keys
        got = store.get_batch(keys)
        assert got.shape == (4, 14, 14)
        assert got.min() >= 0 and got.max() <= 1
        np.testing.assert_allclose(got, expected[method], atol=tolerance[method], err_msg=method)
        # min-max normalized per image: every non-constant map reaches 0 and 1
        flat = got.reshape(4, -1)
        assert np.allclose(flat.max(1), 1.0) and np.allclose(flat.min(1), 0.0)


def test_store_attrs_record_provenance(generated, small_set):
    _, _, keys = small_set
    _, labels = folder_labels(keys)
    for method in ALL:
        store = open_store(generated / f"{method}.zarr")
        attrs = store.attrs
        assert attrs["method"] == method and attrs["complete"] is True
        assert attrs["software"]["attgmae"] and attrs["software"]["torch"]
        assert "224x224" in attrs["preprocessing"] and "without cropping" in attrs["preprocessing"]
        np.testing.assert_array_equal(store.labels, labels)
        assert attrs["class_names"] == ["circle", "cross", "square", "triangle"]
        if method == "random":
            assert attrs["params"] == {"seed": 0} and attrs["model"] is None
        else:
            assert attrs["random_weights"] is True and attrs["params"]["random_weights"] is True
            assert attrs["model"]["source"].startswith("random")
    assert open_store(generated / "tokencut.zarr").attrs["params"] == {
        "tau": TAU, "eps": 1e-5, "map": "fg-eigvec", "random_weights": True,
        "weights": "random(seed=0)", "precision": "fp32",
    }
    assert open_store(generated / "gradcam.zarr").attrs["model"]["architecture"] == "resnet50"
    record = json.loads((generated / "generate_run.json").read_text())
    assert record["result"]["num_computed"] == 8 and record["result"]["exit_code"] == 0


def test_rerun_skips_complete_stores_and_refuses_other_params(generated, small_set, capsys):
    root, file_list, _ = small_set
    before = open_store(generated / "dino.zarr").read_all()
    args = ["generate", str(root), "--out", str(generated), "--file_list", str(file_list),
            "--random_weights", "--device", "cpu", "--no_progress", "--tokencut_tau", str(TAU)]
    assert main(args + ["--methods", ",".join(ALL)]) == 0
    err = capsys.readouterr().err
    assert "already complete" in err and "computed this run: 0" in err
    np.testing.assert_array_equal(open_store(generated / "dino.zarr").read_all(), before)
    assert main(args + ["--methods", "tokencut", "--tokencut_tau", "0.3"]) == 2  # last one wins
    err = capsys.readouterr().err
    assert "other parameters" in err and "--overwrite" in err


def test_h5_format_file_list_and_overwrite(small_set, tmp_path, capsys):
    root, _, keys = small_set
    file_list = write_file_list(tmp_path / "three.txt", [keys[5], keys[0], keys[2]])
    args = ["generate", str(root), "--out", str(tmp_path / "m"), "--file_list", str(file_list),
            "--methods", "random", "--format", "h5", "--device", "cpu", "--no_progress"]
    assert main(args) == 0
    first = open_store(tmp_path / "m" / "random.h5")
    assert list(first.keys) == sorted([keys[5], keys[0], keys[2]])
    first_maps = first.read_all()  # the store reads its file on demand
    assert main(args + ["--seed", "1"]) == 2  # other parameters in the way
    assert "other parameters" in capsys.readouterr().err
    assert main(args + ["--seed", "1", "--overwrite"]) == 0
    second = open_store(tmp_path / "m" / "random.h5")
    assert second.attrs["params"] == {"seed": 1}
    assert not np.array_equal(first_maps, second.read_all())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "dino,sailency"], "sailency"),
        (["--methods", "random", "--format", "npz"], "invalid choice"),
        (["--methods", "dino", "--dino_weights", "MISSING.pth"], "MISSING.pth"),
        (["--methods", "gradcam", "--cam_target", "label", "--random_weights"], "wnid"),
        (["--methods", "dino", "--dino_heads", "first"], "heads"),
        (["--methods", "dino", "--dino_heads", "12", "--random_weights"], "out of range"),
        (["--methods", "tokencut", "--tokencut_eps", "0"], "eps"),
        (["--methods", "random", "--device", "tpu"], "--device"),
        (["--methods", "dino", "--device", "cpu", "--decode", "gpu"], "needs a CUDA device"),
        (["--methods", "dino", "--device", "cpu", "--resize", "gpu"], "needs a CUDA device"),
        (["--methods", "dino", "--decode", "gpu", "--resize", "cpu"], "drop --resize cpu"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(small_set, tmp_path, capsys, extra, message):
    root, file_list, _ = small_set
    argv = ["generate", str(root), "--out", str(tmp_path / "m"), "--file_list", str(file_list),
            "--no_progress", *extra]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own refusal (choices)
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").glob("*.zarr"))


def test_bad_paths_and_weights_exit_2(tmp_path, small_set, capsys):
    root, file_list, _ = small_set
    (tmp_path / "empty").mkdir()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    cases = [
        ([str(tmp_path / "nowhere")], "nowhere"),
        ([str(tmp_path / "empty")], "no images"),
        ([str(root), "--methods", "dino", "--dino_weights", str(garbage)], "garbage.pth"),
        ([str(root), "--file_list", str(tmp_path / "list.txt")], "list.txt"),
    ]
    (tmp_path / "list.txt").write_text("circle/not_there.JPEG\n")
    for argv, message in cases:
        code = main(["generate", *argv, "--out", str(tmp_path / "m"), "--device", "cpu",
                     "--num_workers", "0", "--no_progress"])
        err = capsys.readouterr().err
        assert code == 2, argv
        assert "error:" in err and message in err, err


def test_imagenet_targets_need_the_1000_wnid_folders():
    from attgmae.core.errors import InputError
    from attgmae.maps.gradcam import imagenet_targets

    wnids = [f"n{i:08d}" for i in range(1000)]
    labels = np.array([0, 999, 5], dtype=np.int64)
    np.testing.assert_array_equal(imagenet_targets(wnids, labels), labels)
    with pytest.raises(InputError, match="1000 class folders"):
        imagenet_targets(wnids[:999], labels)
    with pytest.raises(InputError, match="wnid"):
        imagenet_targets([*wnids[:999], "cat"], labels)
    with pytest.raises(InputError, match="not inside a class folder"):
        imagenet_targets(wnids, np.array([0, -1], dtype=np.int64))


def test_weights_file_sha256_recorded_and_used(generated, small_set, tmp_path, capsys):
    import hashlib

    from attgmae.models.backbones import load_resnet50

    root, _, keys = small_set
    with pytest.warns(UserWarning):
        resnet, _ = load_resnet50(random_weights=True)
    weights = tmp_path / "resnet50-test.pth"
    torch.save(resnet.state_dict(), weights)  # torchvision layout state dict
    file_list = write_file_list(tmp_path / "two.txt", keys[:2])
    out = tmp_path / "m"
    assert main(["generate", str(root), "--out", str(out), "--file_list", str(file_list),
                 "--methods", "gradcam", "--resnet_weights", str(weights), "--device", "cpu",
                 "--num_workers", "0", "--no_progress"]) == 0
    store = open_store(out / "gradcam.zarr")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert store.attrs["model"]["sha256"] == digest
    assert store.attrs["params"]["weights"] == f"sha256:{digest}"
    assert store.attrs["model"]["weights_file"].endswith("resnet50-test.pth")
    assert store.attrs["random_weights"] is False
    # the same network as the random-weights run: the same maps
    np.testing.assert_allclose(
        store.get_batch(keys[:2]), open_store(generated / "gradcam.zarr").get_batch(keys[:2]),
        atol=1e-3,
    )
    # Other weights are other maps: the complete store is neither kept as done nor resumed.
    resnet.fc.bias.data.add_(1.0)
    other = tmp_path / "resnet50-other.pth"
    torch.save(resnet.state_dict(), other)
    rerun = ["generate", str(root), "--out", str(out), "--file_list", str(file_list),
             "--methods", "gradcam", "--device", "cpu", "--num_workers", "0", "--no_progress"]
    assert main([*rerun, "--resnet_weights", str(other)]) == 2
    assert "other parameters" in capsys.readouterr().err
    assert main([*rerun, "--resnet_weights", str(weights)]) == 0
    assert "already complete" in capsys.readouterr().err


def test_precision_flag_selects_bf16_and_is_recorded(generated, small_set, tmp_path):
    root, _, keys = small_set
    two = keys[:2]  # bf16 autocast is slow on a CPU: two images show the flag took effect
    out = tmp_path / "bf16"
    code = main([
        "generate", str(root), "--out", str(out), "--file_list",
        str(write_file_list(tmp_path / "two.txt", two)), "--methods", "dino", "--random_weights",
        "--device", "cpu", "--batch_size", "2", "--num_workers", "0", "--no_progress",
        "--precision", "bf16",
    ])
    assert code == 0
    bf16, fp32 = open_store(out / "dino.zarr"), open_store(generated / "dino.zarr")
    assert bf16.attrs["compute"]["bf16_autocast"] is True
    assert fp32.attrs["compute"]["bf16_autocast"] is False
    maps_bf16 = bf16.get_batch(two).astype(np.float32)
    maps_fp32 = fp32.get_batch(two).astype(np.float32)
    assert not np.array_equal(maps_bf16, maps_fp32)  # the flag reached the forward
    assert np.corrcoef(maps_bf16.ravel(), maps_fp32.ravel())[0, 1] > 0.9


def _four_image_dino_argv(small_set, tmp_path, out_name: str) -> tuple[list[str], list[str]]:
    """(argv of a CPU dino run over four of ``small_set``'s images into ``tmp_path/out_name``,
    those four keys): the runs that compare a pixel path's maps with ``generated``'s."""
    root, _, keys = small_set
    four = keys[2:6]
    argv = ["generate", str(root), "--out", str(tmp_path / out_name), "--file_list",
            str(write_file_list(tmp_path / "four.txt", four)), "--methods", "dino",
            "--random_weights", "--device", "cpu", "--batch_size", "4", "--num_workers", "1",
            "--no_progress"]  # fmt: skip
    return argv, four


def _assert_maps_match_the_workers_path(store, generated, keys) -> None:
    """``store``'s maps of ``keys`` within the bf16 tolerance of the workers' path's."""
    from attgmae.maps.agreement import agreement, within_tolerance

    got = store.get_batch(keys).astype(np.float32)
    want = open_store(generated / "dino.zarr").get_batch(keys).astype(np.float32)
    stats = agreement(got, want)
    assert within_tolerance(stats) and stats["mean_abs_diff"] < 0.01, stats


def test_gpu_decode_is_a_defining_parameter_and_keeps_the_maps(generated, small_set, tmp_path,
                                                               monkeypatch, capsys):  # fmt: skip
    """--decode gpu's path (payloads from the workers, decode and resize in the main process)
    run on the CPU; its maps stay within the bf16 tolerance of the CPU path's, and a store made
    with it is never resumed or skipped by a run with the other decoder."""
    from attgmae.data import device_decode
    from attgmae.pipelines import generate

    monkeypatch.setattr(generate, "GPU_DECODE_DEVICES", ("cuda", "cpu"))
    argv, four = _four_image_dino_argv(small_set, tmp_path, "gpu")
    assert main([*argv, "--decode", "gpu"]) == 0
    store = open_store(tmp_path / "gpu" / "dino.zarr")
    assert store.attrs["params"]["decode"] == "gpu" and "nvjpeg" in store.attrs["preprocessing"]
    assert store.attrs["params"]["resize"] == "gpu"
    assert not {"decode", "resize"} & set(open_store(generated / "dino.zarr").attrs["params"])
    _assert_maps_match_the_workers_path(store, generated, four)
    capsys.readouterr()
    assert main(argv) == 2  # the CPU decoder's run refuses the GPU decoder's store
    assert "other parameters" in capsys.readouterr().err
    monkeypatch.setattr(device_decode, "jpeg_decoder", lambda: None)  # no working GPU decoder
    assert main([*argv, "--decode", "gpu", "--overwrite"]) == 2
    assert "torchvision cannot decode JPEGs" in capsys.readouterr().err
    assert open_store(tmp_path / "gpu" / "dino.zarr").attrs["complete"]  # nothing lost


def test_gpu_resize_is_a_defining_parameter_and_makes_pils_pixels(
    generated, small_set, tmp_path, monkeypatch
):
    """--resize gpu (the default on CUDA) run on the CPU: the workers only decode, the main
    process resizes exactly as PIL; the maps are within the bf16 tolerance of the workers'
    resize (their pixels within 1 grey level), and the store records where the pixels were
    resized: a --resize cpu run refuses it, a --resize gpu run skips it as complete."""
    from attgmae.data import pil_exact

    monkeypatch.setattr(pil_exact, "FAST_DEVICE_TYPES", ("cuda", "cpu"))  # auto: gpu here
    argv, four = _four_image_dino_argv(small_set, tmp_path, "resize")
    assert main(argv) == 0
    store = open_store(tmp_path / "resize" / "dino.zarr")
    assert store.attrs["params"]["resize"] == "gpu" and "decode" not in store.attrs["params"]
    assert "exactly" in store.attrs["preprocessing"]
    _assert_maps_match_the_workers_path(store, generated, four)
    assert main([*argv, "--resize", "cpu"]) == 2  # never mixed with the workers' resize
    assert main([*argv, "--resize", "gpu"]) == 0  # complete with these parameters: skipped


def test_a_batch_over_its_shm_budget_is_resized_by_its_worker_into_the_same_maps(
    small_set, tmp_path, monkeypatch
):
    """--resize gpu with /dev/shm planned for 224 px images only (``item_bytes`` says so): a
    batch of larger photos is over its budget, so the worker resizes them itself (PIL's pixels,
    which the device makes too), and the maps equal those of the unbounded run."""
    from PIL import Image

    from attgmae.data import map_inputs, pil_exact
    from attgmae.pipelines import generate_workers

    root, _, keys = small_set
    large = tmp_path / "large"
    for key in keys[:4]:  # 320 x 240: larger than the 224 x 224 pixels they become
        (large / key).parent.mkdir(parents=True, exist_ok=True)
        Image.open(root / key).resize((320, 240), Image.BICUBIC).save(large / key, quality=92)
    monkeypatch.setattr(pil_exact, "FAST_DEVICE_TYPES", ("cuda", "cpu"))  # auto: gpu here

    def run(out_name: str) -> np.ndarray:
        assert main(["generate", str(large), "--out", str(tmp_path / out_name), "--methods",
                     "dino", "--random_weights", "--device", "cpu", "--batch_size", "4",
                     "--num_workers", "0", "--no_progress"]) == 0  # fmt: skip
        return open_store(tmp_path / out_name / "dino.zarr").get_batch(keys[:4])

    unbounded = run("unbounded")
    resized = []
    worker_resize = map_inputs.resized_in_worker  # spied on: --num_workers 0 collates here

    def spy(payload):
        resized.append(tuple(payload.shape))
        return worker_resize(payload)

    monkeypatch.setattr(map_inputs, "resized_in_worker", spy)
    monkeypatch.setattr(generate_workers, "item_bytes", lambda cfg, keys: 224 * 224 * 3)
    np.testing.assert_array_equal(run("bounded"), unbounded)
    assert resized and set(resized) == {(240, 320, 3)}


def test_cuda_backends_pick_the_same_algorithms_in_every_process():
    """cuDNN's autotuner may choose other kernels in a resumed run or another rank; off."""
    from attgmae.pipelines.generate import configure_cuda_backends

    flags = ("benchmark", "deterministic", "allow_tf32")
    before = {name: getattr(torch.backends.cudnn, name) for name in flags}
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.benchmark = True
        configure_cuda_backends(fp32=True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        for name, value in before.items():
            setattr(torch.backends.cudnn, name, value)
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


def test_file_list_lines_become_keys_relative_to_the_root(small_set, tmp_path):
    """'find .' style (./class/x) and absolute lines give the same keys as a listing, so the
    first folder stays the label; a line outside the root is an error naming it."""
    root, _, keys = small_set
    lines = [f"./{keys[0]}", str((root / keys[1]).resolve()), keys[2], ""]
    listed = list_images(root, write_file_list(tmp_path / "mixed.txt", lines))
    assert listed == sorted(keys[:3])
    assert folder_labels(listed)[0] == sorted({k.split("/")[0] for k in keys[:3]})
    outside = write_file_list(tmp_path / "outside.txt", [f"../{root.name}/{keys[0]}"])
    with pytest.raises(ValueError, match=r"outside.txt.*not inside the image root"):
        list_images(root, outside)
