"""Progress of long phases: whole lines with img/s and ETA when the output is a log file (no
carriage returns), a tqdm bar on a terminal; training lines with s/iter and ETAs."""

import io

from attgmae.core.progress import Progress, duration, loop_pace, pace
from attgmae.eval.features import image_split, split_features


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_file_gets_whole_lines_with_rate_and_eta():
    stream = io.StringIO()
    with Progress(10, "train features", stream=stream, interval=0) as bar:
        for step in range(5):
            if step == 4:
                bar.set_postfix(failed=1)
            bar.update(2)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 5 and lines[-1].startswith("train features: 10/10 img (100%)")
    assert all("img/s" in line and "ETA" in line for line in lines)
    assert lines[0].startswith("train features: 2/10 img (20%)") and "failed=1" in lines[-1]


def test_lines_in_a_log_file_come_every_30_s_plus_the_first_and_the_last():
    stream = io.StringIO()
    bar = Progress(1000, "generate", stream=stream)  # default interval off a terminal: 30 s
    for _ in range(1000):
        bar.update(1)
    bar.close()
    bar.close()  # a second close writes nothing
    lines = stream.getvalue().splitlines()
    assert [line.split(" img")[0] for line in lines] == ["generate: 1/1000", "generate: 1000/1000"]


def test_a_terminal_gets_a_tqdm_bar_and_other_ranks_nothing():
    terminal = Terminal()
    with Progress(4, "val features", stream=terminal) as bar:
        bar.update(4)
    assert "\r" in terminal.getvalue() and "4/4" in terminal.getvalue()
    silent = io.StringIO()
    with Progress(4, "val features", stream=silent, enabled=False, interval=0) as bar:
        bar.update(4)
    assert silent.getvalue() == ""


def test_training_pace_shows_time_per_iteration_and_both_etas():
    assert duration(3725) == "1:02:05" and duration(float("nan")) == "?"
    assert pace(0.5, 10, 130, device="cpu") == "s/iter 0.500 ETA epoch 0:00:05 run 0:01:05"
    text = loop_pace(0.0, 0, 9, 100, epoch=0, epochs=2)  # 10 of 200 iterations done
    assert text.startswith("s/iter ") and " ETA epoch " in text and " run " in text


def test_feature_extraction_reports_progress_off_a_terminal(example_root, capsys):
    from attgmae.models import mae_vit_tiny_patch16

    model = mae_vit_tiny_patch16(img_size=32).eval()
    val = image_split(example_root, "val")
    split_features(model, val, "val", device="cpu", input_size=32, batch_size=4, log=print)
    err = capsys.readouterr().err  # (not a terminal under pytest)
    assert "\r" not in err
    assert "val features: 4/12 img (33%)" in err and "val features: 12/12 img (100%)" in err
    assert "img/s" in err and "ETA" in err
