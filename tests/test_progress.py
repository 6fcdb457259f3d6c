"""ray_rm/progress.py: ETA arithmetic, training lines and the row progress bar, against hand-computed values."""
import io
import math

import pytest

from ray_rm.progress import ProgressBar, StepRate, bar_line, eta_seconds, format_duration, train_line


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (59.6, "1m00s"), (185, "3m05s"),
                                           (7620, "2h07m"), (None, "?"), (math.nan, "?"), (-1, "?")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_eta_seconds():
    assert eta_seconds(5, 20, 0.5) == 30.0  # 15 steps left at 0.5 steps/s
    assert eta_seconds(450, 1000, 12.5) == 44.0
    assert eta_seconds(20, 20, None) == 0.0  # finished: nothing left, whatever the rate
    assert eta_seconds(5, None, 1.0) is None  # unknown total
    assert eta_seconds(5, 20, 0.0) is None and eta_seconds(5, 20, None) is None  # no rate yet


def test_step_rate_counts_from_the_first_step_seen():
    rate = StepRate()
    # the first report: only the step's own duration tells the rate (2 s per step)
    assert rate.observe(3, 100.0, step_seconds=2.0) == 0.5
    assert rate.observe(3, 100.0) is None  # same step, no duration: nothing known
    # later reports: steps since the first report over the time since it (startup before step 3 not counted)
    assert rate.observe(5, 104.0, step_seconds=9.0) == 0.5  # (5 - 3) / (104 - 100)
    assert rate.observe(7, 110.0) == 0.4  # (7 - 3) / (110 - 100)
    # a restart from an earlier checkpoint starts a new window
    assert rate.observe(2, 200.0, step_seconds=4.0) == 0.25
    assert rate.observe(6, 210.0) == 0.4  # (6 - 2) / (210 - 200)


def test_train_line_shows_metrics_pairs_per_s_and_eta():
    metrics = {"global_step": 5, "train/rm/loss": 0.6931, "train/rm/accuracy": 0.5, "train/rm/pairs_per_s": 12.0,
               "eval/rm/accuracy": math.nan, "epoch": 0}
    line = train_line(metrics, total_steps=20, elapsed=40.0, rate=0.5)
    # 15 steps left at 0.5 steps/s = 30 s; NaN metrics are left out
    assert line == "[ray_rm] step 5/20 | loss 0.6931 | acc 0.500 | pairs/s 12 | 40s elapsed, ETA 30s"
    line = train_line({"global_step": 0, "eval/rm/loss": 0.7}, 20, 3.0, None, checkpoint=True)
    assert line == "[ray_rm] step 0/20 | eval_loss 0.7 | checkpoint saved | 3s elapsed, ETA ?"


def test_bar_line_known_and_unknown_total():
    # 450/1000 = 45%: 9 of 20 cells; 550 rows left at 12.5 rows/s = 44 s
    assert (bar_line("relabel", 450, 1000, 36.0, 12.5, width=20)
            == "relabel  45%|#########           | 450/1000 rows | 12.5 rows/s | 36s, ETA 44s")
    assert bar_line("eval", 450, None, 36.0, 12.5) == "eval 450 rows | 12.5 rows/s | 36s"
    assert bar_line("eval", 0, 10, 0.0, None, width=4) == "eval   0%|    | 0/10 rows | ? rows/s | 0s, ETA ?"


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_bar_in_logs_writes_a_line_every_interval_and_at_the_end():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar(1000, desc="eval", stream=out, interval_s=10, clock=clock, tty=False)
    for t, n in ((1, 100), (5, 100), (12, 100), (13, 100)):
        clock.now = t
        bar.update(n)
    clock.now = 20
    bar.close()
    bar.close()  # idempotent
    lines = out.getvalue().splitlines()
    # t=1 (first update), t=12 (10 s after it), close; t=5 and t=13 fall inside the interval
    assert len(lines) == 3
    assert lines[0].startswith("eval  10%|") and "100/1000 rows | 100 rows/s | 1s, ETA 9s" in lines[0]
    assert "300/1000 rows | 25 rows/s | 12s, ETA 28s" in lines[1]  # 300 rows in 12 s, 700 left
    assert "400/1000 rows | 20 rows/s | 20s, ETA 30s" in lines[2]
    assert "\r" not in out.getvalue()


def test_bar_on_a_terminal_redraws_one_line_in_place():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar(10, desc="relabel", stream=out, clock=clock, tty=True, redraw_s=0.2)
    for i in range(1, 11):
        clock.now = i * 0.5
        bar.update(1)
    bar.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, ended once at close
    assert text.count("\r") == 11  # every update 0.5 s apart redraws, plus the final state
    assert text.rstrip("\n").split("\r")[-1] == "relabel 100%|########################| 10/10 rows | 2 rows/s | 5s, ETA 0s\x1b[K"


def test_bar_rate_ignores_resumed_rows_and_disabled_bar_is_silent():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar(1000, initial=400, desc="relabel", stream=out, clock=clock, tty=False)
    clock.now = 2
    bar.update(100)  # 100 rows this run in 2 s: 50 rows/s, 500 left: 10 s
    assert "500/1000 rows | 50 rows/s | 2s, ETA 10s" in out.getvalue()
    quiet = io.StringIO()
    bar = ProgressBar(10, stream=quiet, enabled=False, clock=clock, tty=True)
    bar.update(5)
    bar.close()
    assert quiet.getvalue() == ""


def test_training_progress_callback_prints_the_eta_line(capsys):
    from ray_rm.train.metrics import ProgressLine

    callback = ProgressLine(total_steps=20)
    # the first step seen: 2 s per step by its own measure, 19 steps left -> 38 s
    callback.after_report(None, [{"global_step": 1, "train/rm/loss": 0.7, "train/rm/step_seconds": 2.0,
                                  "train/rm/pairs_per_s": 4.0}], None)
    callback.after_report(None, [{"epoch": 0}], None)  # a report without a step prints nothing
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("[ray_rm] step 1/20 | loss 0.7 | pairs/s 4 | ")
    assert lines[0].endswith(" elapsed, ETA 38s")
