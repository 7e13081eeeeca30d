"""Findings of a new-user trial of the CLI: ``sync plan``/``sync run`` keep the suppression lists
current as the assets do (and fail closed), errors in what the user wrote are one line and exit 2,
an explicitly set optional-file variable must name a file, and the ``sync run`` JSON reports what
the asset's metadata reports."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from segment_pipeline import settings
from segment_pipeline.cli import main
from segment_pipeline.core.privacy.ledger import Ledger
from segment_pipeline_tests.fakes.helpers import KLAVIYO_KEY
from segment_pipeline_tests.fakes.klaviyo import FakeKlaviyo
from segment_pipeline_tests.test_cli_sync_plan import D1, PEOPLE, _day, project  # noqa: F401 (fixture)


def _privacy(tmp_path: Path, monkeypatch, listed: list[str]) -> Path:
    (tmp_path / "optout.txt").write_text("".join(f"{e}\n" for e in listed))
    (tmp_path / "privacy.yaml").write_text("suppression:\n  - {name: optout, path: optout.txt}\n")
    monkeypatch.setenv("SEGMENT_PIPELINE_PRIVACY", str(tmp_path / "privacy.yaml"))
    return tmp_path / "optout.txt"


def _touch_later(path: Path) -> None:
    later = path.stat().st_mtime + 5  # after today's load, whatever the file system's time resolution
    os.utime(path, (later, later))


def test_sync_run_and_plan_reload_suppression_lists_that_the_daily_asset_never_loaded(project, tmp_path,  # noqa: F811
                                                                                      monkeypatch, capsys):
    wh = project
    optout = _privacy(tmp_path, monkeypatch, ["u00@shop.com"])
    _day(wh, D1, PEOPLE)
    assert not (wh.root / "suppression").exists()  # the suppression_lists asset never ran on this warehouse
    with FakeKlaviyo() as fake:
        monkeypatch.setenv("KLAVIYO_API_KEY", KLAVIYO_KEY)
        monkeypatch.setenv("KLAVIYO_BASE_URL", fake.url)
        assert main(["sync", "run", "klaviyo"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["upserted"] == 19 and out["suppressed"] == {"optout": 1} and out["suppressed_total"] == 1
        (lid,) = fake.lists_named("Nosto Customers")
        assert fake.member_emails(lid) == set(PEOPLE) - {"u00@shop.com"}  # the suppressed contact was not sent

        # a newly listed address is held back by the next plan
        optout.write_text("u00@shop.com\nu01@shop.com\n")
        _touch_later(optout)
        assert main(["sync", "plan", "klaviyo"]) == 0
        assert "contacts held now: 19; desired: 18" in capsys.readouterr().out

        # a list file gone missing is caught, naming the list and the file; nothing is sent
        optout.unlink()
        _touch_later(tmp_path / "privacy.yaml")
        jobs = len(fake.jobs)
        for action in ("plan", "run"):
            assert main(["sync", action, "klaviyo"]) == 2
            err = capsys.readouterr().err
            assert "suppression list 'optout'" in err and "optout.txt does not exist" in err
            assert "Traceback" not in err
        assert len(fake.jobs) == jobs


def test_sync_run_fails_closed_when_declared_lists_cannot_be_loaded(project, tmp_path, monkeypatch, capsys):  # noqa: F811
    wh = project
    _privacy(tmp_path, monkeypatch, ["u00@shop.com"])
    _day(wh, D1, PEOPLE)
    (wh.root / "suppression").write_text("not a folder")  # no load can be written under the warehouse
    with FakeKlaviyo() as fake:
        monkeypatch.setenv("KLAVIYO_API_KEY", KLAVIYO_KEY)
        monkeypatch.setenv("KLAVIYO_BASE_URL", fake.url)
        assert main(["sync", "run", "klaviyo"]) == 2
        err = capsys.readouterr().err
        assert "declares suppression lists but they cannot be loaded" in err and "unfiltered" in err
        assert str(tmp_path / "privacy.yaml") in err
        assert not fake.jobs and fake.lists_named("Nosto Customers") == []  # nothing sent unfiltered


def test_sync_dry_run_json_has_payload_dir_and_privacy_counts(project, tmp_path, monkeypatch, capsys):  # noqa: F811
    wh = project
    _privacy(tmp_path, monkeypatch, ["u03@shop.com", "u04@shop.com"])
    _day(wh, D1, PEOPLE)
    assert main(["sync", "run", "klaviyo"]) == 0  # no credentials: a dry run
    out = json.loads(capsys.readouterr().out)
    assert out["dry_run"] is True and out["suppressed"] == {"optout": 2} and out["suppressed_total"] == 2
    assert Path(out["payload_dir"]).is_dir() and Path(out["payload_dir"]).is_relative_to(wh.root / "sync_dry_run")


def test_user_errors_are_one_line_and_exit_2(project, tmp_path, monkeypatch, capsys):  # noqa: F811
    wh = project
    _day(wh, D1, PEOPLE)
    cases = [
        ("destinations.yaml", "klaviyo:\n  mappings:\n    - {from: no_such_attribute, to: x}\n", "destinations.yaml"),
        ("destinations.yaml", "klaviyo: [unclosed\n", "destinations.yaml"),
    ]
    for name, text, named in cases:
        (tmp_path / name).write_text(text)
        for action in ("plan", "run"):
            assert main(["sync", action, "klaviyo"]) == 2, (text, action)
            err = capsys.readouterr().err
            assert named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "destinations.yaml").write_text("klaviyo:\n  mappings: []\n")
    (tmp_path / "privacy.yaml").write_text("suppression:\n  - {name: optout}\n")  # neither path nor source
    monkeypatch.setenv("SEGMENT_PIPELINE_PRIVACY", str(tmp_path / "privacy.yaml"))
    assert main(["sync", "plan", "klaviyo"]) == 2
    err = capsys.readouterr().err
    assert "privacy.yaml" in err and "suppression.0" in err and len(err.strip().splitlines()) == 1

    missing = tmp_path / "nonexistent.csv"
    assert main(["forget", "--file", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"forget: --file {missing}: no such file"


def test_forget_prints_the_export_location_plainly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEGMENT_PIPELINE_WAREHOUSE", str(tmp_path / "warehouse"))
    monkeypatch.setenv("SEGMENT_PIPELINE_EXPORT_DIR", str(tmp_path / "exports"))
    monkeypatch.delenv("SEGMENT_PIPELINE_EXPORT_BUCKET", raising=False)
    (tmp_path / "warehouse").mkdir()
    (tmp_path / "exports").mkdir()
    assert main(["forget", "gone@shop.com"]) == 0
    out = capsys.readouterr().out
    assert f"removing them from the exports in {tmp_path / 'exports'}" in out
    assert "LocalExportStorage(" not in out


@pytest.mark.parametrize("var,getter", [("SEGMENT_PIPELINE_PRIVACY", settings.privacy_file),
                                        ("SEGMENT_PIPELINE_DESTINATIONS", settings.destinations_file),
                                        ("SEGMENT_PIPELINE_SOURCES", settings.sources_file)])
def test_an_explicitly_set_optional_file_must_exist(var, getter, tmp_path, monkeypatch):
    monkeypatch.setenv(var, str(tmp_path / "privcy.yaml"))  # a typo must not switch the feature off
    with pytest.raises(settings.SettingsError) as err:
        getter()
    assert var in str(err.value) and str(tmp_path / "privcy.yaml") in str(err.value)
    (tmp_path / "privcy.yaml").write_text("{}\n")
    assert getter() == str(tmp_path / "privcy.yaml")
    monkeypatch.setenv(var, "none")  # the documented "no file"
    assert not Path(getter()).is_file()
    monkeypatch.delenv(var)
    assert getter().startswith(str(settings.base_dir()))  # the default path, missing or not: no error


def test_cli_names_a_mistyped_privacy_variable(project, tmp_path, monkeypatch, capsys):  # noqa: F811
    _day(project, D1, PEOPLE)
    monkeypatch.setenv("SEGMENT_PIPELINE_PRIVACY", str(tmp_path / "privcy.yaml"))
    assert main(["sync", "run", "klaviyo"]) == 2
    err = capsys.readouterr().err
    assert f"SEGMENT_PIPELINE_PRIVACY={tmp_path / 'privcy.yaml'}" in err and "does not exist" in err


def test_erasure_confirm_clears_the_last_error(tmp_path):
    ledger = Ledger(tmp_path)
    (req,) = ledger.request(["late@shop.com"], "cli")
    rid = req.request_id
    ledger.mark_many([rid], "klaviyo", "asked")
    ledger.mark_many([rid], "klaviyo", "failed", "HTTP 500")
    ledger.mark_many([rid], "klaviyo", "confirmed")
    (row,) = [r for r in ledger.status(rid) if r["destination"] == "klaviyo"]
    assert row["confirmed_at"] and row["last_error"] is None
