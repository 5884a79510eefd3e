"""``rayeffi bench soak``'s arithmetic and report on made-up samples (the bench itself: the slow tier)."""

from __future__ import annotations

import json
import os

import pytest

from rayeffi.bench.soak import BOUND_MIB_PER_H, Sampler, open_fds, report, rss_mib, slope_per_hour


def test_the_slope_is_per_hour():
    times = [0.0, 60.0, 120.0, 180.0]
    assert slope_per_hour(times, [10.0, 11.0, 12.0, 13.0]) == pytest.approx(60.0)
    assert slope_per_hour(times, [5.0, 5.0, 5.0, 5.0]) == 0.0
    assert slope_per_hour([0.0], [1.0]) == 0.0


def test_this_process_is_measured():
    assert rss_mib(os.getpid()) > 10 and open_fds(os.getpid()) >= 3
    assert rss_mib(2**22 + 1) is None and open_fds(2**22 + 1) is None


def _sampler(driver_mib_per_sample: float) -> Sampler:
    sampler = Sampler(60.0)
    sampler.run_marks = [0, 1, 3]
    for index in range(6):
        found = {(1, 1): ("driver", 100.0 + driver_mib_per_sample * index, 20),
                 (2, 2): ("gcs_server", 50.0, 30)}
        if index in (1, 2):  # a Train worker of the second run
            found[(3, 3 + index)] = ("ray::RayTrainWorker", 300.0 + index, 40)
        sampler.samples.append((60.0 * index, found))
    return sampler


def test_the_report_says_whether_growth_is_within_the_bound(capsys):
    report(_sampler(0.0), runs=2, minutes=6)
    out = capsys.readouterr().out
    assert "growth driver: +0.0 MiB/h, +0.0 fds/h over the second half (whole window +0.0 MiB/h, +0.0 fds/h): " \
           "within the bound" in out
    assert "growth all 2 long-lived: +0.0 MiB/h" in out  # the short-lived Train worker is left out
    assert "Train workers' peak RSS per run (MiB): first 302.0, last 302.0" in out
    report(_sampler(BOUND_MIB_PER_H), runs=2, minutes=6)  # the bound per minute: 60x over it
    assert "): OVER the bound" in capsys.readouterr().out


def test_too_short_a_run_says_so(capsys):
    sampler = Sampler(60.0)
    sampler.run_marks = [0]
    sampler.samples = [(0.0, {(1, 1): ("driver", 1.0, 1)})]
    report(sampler, runs=1, minutes=1)
    assert "too few samples after the warm-up" in capsys.readouterr().out


def test_one_long_run_is_sized_from_the_warm_ups_epochs():
    from rayeffi.bench.soak import epoch_seconds, long_recipe
    from rayeffi.recipe import validate_recipe

    assert epoch_seconds([0.0, 0.5, 1.0, 9.0]) == 0.5  # the median gap: a slow validation does not count
    stages = validate_recipe(long_recipe(30, 0.5)).stages  # 3,600 epochs' worth
    assert [stage.name for stage in stages] == ["dense", "dsd", "tuned"]
    assert stages[0].total_epochs == 2160 and stages[1].total_epochs == 720 and stages[2].total_epochs == 720


def test_a_process_that_lived_through_part_of_the_run_is_measured_over_its_own_samples(capsys):
    sampler = Sampler(60.0)
    sampler.run_marks = [0, 1]
    for index in range(12):
        found = {(1, 1): ("driver", 100.0, 20)}
        if 2 <= index < 10:  # the long stage's Train worker, growing 1 MiB a minute
            found[(3, 3)] = ("ray::RayTrainWorker", 300.0 + index, 40)
        sampler.samples.append((60.0 * index, found))
    report(sampler, runs=2, minutes=12)
    out = capsys.readouterr().out
    assert "ray::RayTrainWorker*" in out and "lived through part of the window only" in out
    assert "growth longest-lived Train worker (8 samples): +60.0 MiB/h, +0.0 fds/h over the second half " \
           "(whole window +60.0 MiB/h, +0.0 fds/h): OVER the bound" in out
    assert "growth driver: +0.0 MiB/h" in out and "growth all 1 long-lived" in out


def test_a_cache_that_fills_and_stops_counts_as_no_growth_in_the_second_half(capsys, tmp_path):
    """Ray's bounded records (the GCS's tasks, Ray Data's datasets) grow for the first minutes,
    then stop: the verdict reads the second half; the whole window's slope is printed beside it."""
    from rayeffi.bench.soak import save_samples

    sampler = Sampler(60.0)
    sampler.run_marks = [0, 1]
    for index in range(13):
        found = {(1, 1): ("driver", 100.0, 20), (2, 2): ("gcs_server", 50.0 + 5 * min(index, 5), 30)}
        sampler.samples.append((60.0 * index, found))
    report(sampler, runs=1, minutes=13)
    out = capsys.readouterr().out
    assert "growth all 2 long-lived: +0.0 MiB/h, +0.0 fds/h over the second half (whole window +" in out
    assert "within the bound" in out and "OVER" not in out
    save_samples(sampler, tmp_path / "soak-samples.json")
    saved = json.loads((tmp_path / "soak-samples.json").read_text())
    assert saved["run_marks"] == [0, 1] and saved["samples"][12] == [720.0, [[1, 1, "driver", 100.0, 20],
                                                                          [2, 2, "gcs_server", 75.0, 30]]]


@pytest.mark.parametrize("only", ["dense", "dsd", "tuned"])
def test_one_stage_alone_gets_the_whole_run(only):
    from rayeffi.bench.soak import long_recipe
    from rayeffi.recipe import validate_recipe

    (stage,) = validate_recipe(long_recipe(30, 0.5, only=only)).stages  # 3,600 epochs' worth
    assert stage.name == only and stage.init_from is None
    assert stage.total_epochs in (3600, 3601)  # DSD: 1,800 rounds of 2 epochs, after 1 dense epoch


def test_one_long_run_is_judged_on_the_samples_taken_while_it_ran(capsys):
    sampler = Sampler(60.0)
    sampler.run_marks = [0, 1]
    for index in range(8):  # the last sample: after the run, its workers gone, the summary written
        sampler.samples.append((60.0 * index, {(1, 1): ("driver", 100.0 if index < 7 else 140.0, 20)}))
    report(sampler, runs=2, minutes=8, during_last_run=True)
    assert "growth driver: +0.0 MiB/h" in capsys.readouterr().out
    report(sampler, runs=2, minutes=8)
    assert "growth driver: +0.0 MiB/h" not in capsys.readouterr().out


def test_an_epoch_line_names_its_stage():
    from rayeffi.bench.soak import stage_of

    assert stage_of("[dense] epoch 3: train_loss 0.1000") == "dense"
    assert stage_of("[tuned/a1b2c3] epoch 12: train_loss 0.1000") == "tuned"  # a trial's line: its stage
    assert stage_of("[dense] worker group restarted from the checkpoint of epoch 2") is None
    assert stage_of("next: rayeffi report out") is None


def test_each_stage_is_judged_after_its_first_minute():
    from rayeffi.bench.soak import stage_windows

    epochs = {"dense": [0.0, 30.0, 600.0], "dsd": [610.0, 650.0], "tuned": [700.0, 1000.0]}
    assert stage_windows(epochs, settle_s=60.0) == [("dense", 60.0, 600.0), ("tuned", 760.0, 1000.0)]


def _staged_sampler(tuned_driver_mib_per_sample: float) -> Sampler:
    """Ten samples a minute apart in each of two stages; the driver steps up 50 MiB between
    them; the tuned stage's trial lives through its window only."""
    sampler = Sampler(60.0)
    for index in range(20):
        tuned = index >= 10
        driver = 100.0 + (50.0 + tuned_driver_mib_per_sample * (index - 10) if tuned else 0.0)
        found = {(1, 1): ("driver", driver, 20), (2, 2): ("gcs_server", 50.0, 30)}
        found[(4, 4) if tuned else (3, 3)] = ("ray::ImplicitFunc" if tuned else "ray::RayTrainWorker", 300.0, 40)
        sampler.samples.append((60.0 * index, found))
    return sampler


def test_growth_within_a_stage_is_judged_and_a_step_between_stages_is_not(capsys):
    from rayeffi.bench.soak import report_stages

    windows = [("dense", 0.0, 540.0), ("tuned", 600.0, 1140.0), ("dsd", 1200.0, 1300.0)]
    report_stages(_staged_sampler(0.0), windows)
    out = capsys.readouterr().out
    assert "dense        9.0      10            100.0   100.0    +0.0   +0.0         3      +0.0   +0.0  within" in out
    assert "tuned        9.0      10            150.0   150.0" in out  # the 50 MiB step is between the windows
    assert "dsd          1.7       0   too few samples to judge" in out
    assert "growth while the stages train: within the bound of 20 MiB/h and 10 fds/h (2 of 2 stages within)" in out
    report_stages(_staged_sampler(1.0), windows)  # 1 MiB a minute while the tuned stage trains
    out = capsys.readouterr().out
    assert "tuned        9.0      10            150.0   159.0   +60.0   +0.0         3     +60.0   +0.0  OVER" in out
    assert "growth while the stages train: OVER the bound of 20 MiB/h and 10 fds/h (1 of 2 stages within)" in out
