"""The engine's time-budget plan for a resumed run (``nailseg.engine.time_budget``)."""

import json
import time

import pytest

from nailseg.config import load_experiment
from nailseg.engine import BUDGET_FILE, time_budget
from nailseg.errors import ConfigError
from nailseg.runs import RunDir
from tests.conftest import REPO


def _resume(tmp_path, plan: dict | str, *overrides: str):
    run = RunDir(tmp_path)
    (tmp_path / BUDGET_FILE).write_text(plan if isinstance(plan, str) else json.dumps(plan))
    exp = load_experiment(REPO / "configs" / "nails-pretrained-cpu.yaml", list(overrides))
    return time_budget(exp, run, True, time.monotonic())


def test_a_resume_keeps_the_epochs_its_first_attempt_planned(tmp_path):
    budget = _resume(tmp_path, {"max_epochs": 100, "planned_epochs": 45})
    assert budget.epochs == 45 and budget.fixed and not budget.notes


def test_a_resume_that_asks_for_more_epochs_trains_them_and_says_so(tmp_path, capsys):
    """The tutorial's ``train --resume RUN trainer.max_epochs=7`` after a budgeted 5-epoch run: the
    seven epochs are trained (the plan of the first attempt was 5), and one line says why."""
    budget = _resume(tmp_path, {"max_epochs": 5, "planned_epochs": 5}, "trainer.max_epochs=7")
    assert budget.epochs == 7 and budget.fixed
    line = capsys.readouterr().out
    assert "planned 5 of 5 epochs" in line and "trainer.max_epochs=7" in line and budget.notes == [line.strip()]
    # the new plan is kept: resumed again with the config's 7 (saved by the first resume), it stands unsaid
    plan = json.loads((tmp_path / BUDGET_FILE).read_text())
    assert (plan["max_epochs"], plan["planned_epochs"]) == (7, 7)
    again = time_budget(load_experiment(REPO / "configs" / "nails-pretrained-cpu.yaml", ["trainer.max_epochs=7"]),
                        RunDir(tmp_path), True, time.monotonic())
    assert again.epochs == 7 and not again.notes and capsys.readouterr().out == ""
    # a budget that trimmed the first attempt: asking for fewer epochs is taken too
    assert _resume(tmp_path, {"max_epochs": 100, "planned_epochs": 45}, "trainer.max_epochs=30").epochs == 30


@pytest.mark.parametrize("bad", ["[]", "{}", '{"planned_epochs": "many"}', "not json"])
def test_a_budget_file_nailseg_did_not_write_is_refused_by_name(tmp_path, bad):
    with pytest.raises(ConfigError, match=BUDGET_FILE):
        _resume(tmp_path, bad)
