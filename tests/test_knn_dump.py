"""`attg-eval knn --dump_features DIR` writes DINO's eval_knn.py dump (trainfeat.pth,
testfeat.pth, trainlabels.pth, testlabels.pth); `--load_features DIR` runs the k-NN on such
files, ours or DINO's, without a checkpoint."""

import json

import pytest
import torch

from attgmae.cli.eval import main
from attgmae.eval.knn import knn_classifier

CPU = ["--device", "cpu", "--num_workers", "0"]


def test_dumped_features_are_dinos_files_and_load_back_to_the_same_numbers(
    tmp_path, example_root, tiny_mae_checkpoints
):
    dump, out = tmp_path / "dump", tmp_path / "knn"
    argv = ["knn", "--checkpoint", str(tiny_mae_checkpoints[0]), "--data_path",
            str(example_root), "--input_size", "32", "--nb_knn", "3", "5", "20", *CPU]  # fmt: skip
    assert main([*argv, "--output_dir", str(out), "--dump_features", str(dump)]) == 0
    train, test = torch.load(dump / "trainfeat.pth"), torch.load(dump / "testfeat.pth")
    train_labels = torch.load(dump / "trainlabels.pth")
    test_labels = torch.load(dump / "testlabels.pth")
    assert train.shape == (24, 192) and test.shape == (12, 192) and train.dtype == torch.float32
    torch.testing.assert_close(train.norm(dim=1), torch.ones(24))  # L2-normalized, as DINO's
    assert train_labels.dtype == torch.int64 and train_labels.tolist() == sorted([0, 1, 2, 3] * 6)
    assert test_labels.tolist() == sorted([0, 1, 2, 3] * 3)
    first = json.loads((out / "knn_mae_seed0.json").read_text())

    again = tmp_path / "again"
    assert main(["knn", "--load_features", str(dump), "--output_dir", str(again),
                 "--nb_knn", "3", "5", "20", *CPU]) == 0  # fmt: skip
    loaded = json.loads((again / "knn_dump.json").read_text())
    assert loaded["results"] == first["results"] and loaded["checkpoint"] is None
    assert loaded["features_from"] == str(dump.resolve()) and loaded["num_classes"] == 4


@pytest.mark.parametrize("normalized", [True, False])
def test_files_in_dinos_layout_give_dinos_knn(tmp_path, normalized):
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(60, 16, generator=g), torch.randn(30, 16, generator=g)
    train_labels = torch.randint(0, 7, (60,), generator=g)
    test_labels = torch.randint(0, 7, (30,), generator=g)
    if normalized:  # as eval_knn.py dumps them
        train, test = (torch.nn.functional.normalize(x, dim=1, p=2) for x in (train, test))
    folder = tmp_path / "dino"
    folder.mkdir()
    files = {"trainfeat.pth": train, "testfeat.pth": test, "trainlabels.pth": train_labels,
             "testlabels.pth": test_labels}  # fmt: skip
    for name, value in files.items():
        torch.save(value, folder / name)
    out = tmp_path / "out"
    assert main(["knn", "--load_features", str(folder), "--output_dir", str(out),
                 "--nb_knn", "5", "10", "20", "--labels", "dino", *CPU]) == 0  # fmt: skip
    results = json.loads((out / "knn_dino.json").read_text())["results"]
    unit = [torch.nn.functional.normalize(x, dim=1, p=2) for x in (train, test)]
    if normalized:
        unit = [train, test]  # used exactly as written
    for row in results:  # DINO's function, called as eval_knn.py calls it (1000 columns)
        top1, top5 = knn_classifier(unit[0], train_labels, unit[1], test_labels, row["k"], 0.07)
        assert (row["top1"], row["top5"]) == (top1, top5)


def test_a_bad_feature_dump_is_a_clear_error(tmp_path, capsys):
    folder = tmp_path / "dump"
    folder.mkdir()
    torch.save(torch.randn(4, 8), folder / "trainfeat.pth")
    argv = ["knn", "--load_features", str(folder), "--output_dir", str(tmp_path / "o"), *CPU]
    assert main(argv) == 2
    assert "testfeat.pth" in capsys.readouterr().err
    torch.save(torch.randn(3, 8), folder / "testfeat.pth")
    torch.save(torch.zeros(5, dtype=torch.int64), folder / "trainlabels.pth")  # 5 labels, 4 rows
    torch.save(torch.zeros(3, dtype=torch.int64), folder / "testlabels.pth")
    assert main(argv) == 2
    assert "trainlabels.pth: expected 4 integer labels" in capsys.readouterr().err
    assert main([*argv, "--checkpoint", "x.pth"]) == 2
    assert "--load_features" in capsys.readouterr().err
    assert main(["knn", "--output_dir", str(tmp_path / "o"), *CPU]) == 2
    assert "--checkpoint and --data_path, or --load_features" in capsys.readouterr().err
