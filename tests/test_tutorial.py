"""The notebooks' shared helpers (``nailseg.tutorial``): the training budget switch."""

from __future__ import annotations

import pytest

from nailseg.tutorial import BUDGET_ENV, budget


def test_budget_is_the_published_one_unless_the_test_budget_is_asked_for(monkeypatch, capsys):
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    assert budget(full=12, test=5) == 12
    assert capsys.readouterr().out == "training budget: 12 epochs\n"
    monkeypatch.setenv(BUDGET_ENV, "Test")
    assert budget(full=12, test=5) == 5
    assert "the published notebook trains 12" in capsys.readouterr().out
    monkeypatch.setenv(BUDGET_ENV, "full")
    assert budget(full=12, test=5) == 12


def test_an_unknown_budget_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "quick")
    with pytest.raises(ValueError, match=f"{BUDGET_ENV}='quick': use one of full, test"):
        budget(full=12, test=5)


def test_record_keeps_each_figure_for_the_floors(tmp_path, monkeypatch, capsys):
    import json

    from nailseg.tutorial import RESULT_FILE, record

    monkeypatch.chdir(tmp_path)
    record(val_iou=0.4123)
    record(test_iou=0.25, val_iou=0.5)  # a later call adds, and replaces a figure it names again
    assert json.loads((tmp_path / RESULT_FILE).read_text()) == {"val_iou": 0.5, "test_iou": 0.25}
    assert "notebook result: val_iou 0.412" in capsys.readouterr().out
