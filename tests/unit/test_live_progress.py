"""Live progress within an epoch: a redrawn line on a terminal, bounded plain lines elsewhere."""

from __future__ import annotations

from rayeffi.stages.live import PLAIN_INTERVAL_S, LiveProgress, progress_text

MESSAGE = {"epoch": 3, "step": 40, "steps": 90, "rows": 2560, "seconds": 2.0}


def test_the_line_says_steps_rate_and_time_left():
    text = progress_text("train", MESSAGE)
    assert text.startswith("[train] progress: epoch 3 [########............] step 40/90")
    assert "1280 samples/s" in text and "about 2 s left" in text
    assert progress_text("train", {**MESSAGE, "steps": None}) == "[train] progress: epoch 3, step 40, 1280 samples/s"


def test_a_terminal_gets_one_line_redrawn_in_place():
    written = []
    live = LiveProgress(written.append, terminal=True)
    for now in range(3):
        live.update("train", MESSAGE, float(now))
    live.clear()
    assert len(written) == 4 and all(text.startswith("\r\033[K") for text in written)
    assert not any("\n" in text for text in written)


def test_logs_get_plain_lines_at_a_bounded_rate_per_trial():
    written = []
    live = LiveProgress(written.append, terminal=False)
    for now in range(30):  # a message every second for 30 s, from two trials
        live.update("tuned/trial_a", MESSAGE, float(now))
        live.update("tuned/trial_b", MESSAGE, float(now))
    per_trial = 30 // PLAIN_INTERVAL_S
    assert len(written) == 2 * per_trial and all(text.endswith("\n") for text in written)
    live.clear()
    assert len(written) == 2 * per_trial  # nothing to clear where nothing was redrawn
