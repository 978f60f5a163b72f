"""trainer.max_time's plan (core/budget.py): durations, the epochs that fit, and the refusals."""

import time

import pytest

from nailseg.core.budget import TimeBudget, parse_duration


@pytest.mark.parametrize("text, seconds", [("20m", 1200), ("1h30m", 5400), ("900s", 900), ("1.5h", 5400),
                                           ("2m 30s", 150)])
def test_durations_read_with_their_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", [20, 1.5, "20", "twenty minutes", "0m", "20m soon", ""])
def test_a_duration_without_a_unit_or_with_junk_is_refused(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def _budget(budget_s: float, max_epochs: int, elapsed_s: float) -> TimeBudget:
    return TimeBudget(budget_s, max_epochs, started=time.monotonic() - elapsed_s)


def test_the_plan_is_made_after_the_second_epoch_from_the_recent_pace():
    """100 s, 50 epochs; the first epoch (10 s, warm-up) is not trusted, the second (4 s) is: after
    14 s, (97 - 14) / 4 = 20 more epochs fit, so 22 in all, and the plan says so in one line."""
    budget = _budget(100, 50, elapsed_s=10)
    assert budget.after_epoch(1, 10.0) is None and budget.epochs == 50
    budget.started -= 4  # the second epoch's 4 s
    line = budget.after_epoch(2, 4.0)
    assert budget.epochs == 22
    assert line.startswith("trainer.max_time 1m40s: 50 epochs do not fit at 4.0 s an epoch") and "training 22" in line
    assert budget.as_dict()["planned_epochs"] == 22 and budget.as_dict()["notes"] == [line]


def test_a_plan_follows_the_settling_pace_then_is_only_trimmed():
    """The second epoch (4 s) still paid for warm-up: when the third takes 2 s, the plan grows back
    (max(mean(4, 2), 2) = 3 s an epoch: 3 + (97 - 16) / 3, 29 once the real clock's moment is
    counted). Past the fifth epoch a
    fast epoch changes nothing (the schedule runs to the plan), and a slow one trims it."""
    budget = _budget(100, 50, elapsed_s=10)
    budget.after_epoch(1, 10.0)
    budget.started -= 4
    budget.after_epoch(2, 4.0)
    assert budget.epochs == 22
    budget.started -= 2
    line = budget.after_epoch(3, 2.0)
    assert budget.epochs == 29 and "training 29 epochs after all" in line
    for epoch in (4, 5, 6):
        budget.started -= 2
        budget.after_epoch(epoch, 2.0)
    settled = budget.epochs
    budget.started -= 0.5  # a fast epoch after the fifth: the plan stays
    assert budget.after_epoch(7, 0.5) is None and budget.epochs == settled
    budget.started -= 40  # a slow one: trimmed to what is left
    assert budget.after_epoch(8, 40.0) is not None and 8 <= budget.epochs < settled


def test_a_budget_that_fits_every_epoch_changes_nothing():
    budget = _budget(3600, 10, elapsed_s=2)
    budget.after_epoch(1, 1.0)
    budget.started -= 1
    assert budget.after_epoch(2, 1.0) is None and budget.epochs == 10 and budget.notes == []


def test_a_resumed_plan_stands():
    budget = TimeBudget(10, 50, epochs=7, fixed=True, started=time.monotonic() - 1000)
    assert budget.after_epoch(3, 100.0) is None and budget.epochs == 7
