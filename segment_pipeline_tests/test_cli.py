"""The command line as a new user meets it: ``--help`` with defaults, ``generate`` that never
writes into the shipped sample by accident, and the instance template's place."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from segment_pipeline import cli, settings


def subcommand_parsers(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from subcommand_parsers(sub, (*prefix, name))


def test_help_of_every_command_shows_its_defaults():
    checked = 0
    for path, parser in subcommand_parsers(cli.build_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if action.required or action.default in (None, False, "", argparse.SUPPRESS) or not action.option_strings:
                continue
            assert f"(default: {action.default})" in " ".join(text.split()), (path, action.dest)
            checked += 1
    assert checked >= 12  # generate's options, serve's host/port/log level, ...
    generate = dict(subcommand_parsers(cli.build_parser()))[("generate",)].format_help()
    assert "--profiles PROFILES   number of distinct customers (default: 3000)" in generate
    assert "(default: None)" not in generate and "(default: False)" not in generate


def test_generate_without_out_is_refused_and_writes_nothing(capsys):
    before = sorted(p.stat().st_mtime_ns for p in (Path(settings.PROJECT_ROOT) / "data" / "landing").rglob("*"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate", "--days", "1"])
    assert exc.value.code == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err
    after = sorted(p.stat().st_mtime_ns for p in (Path(settings.PROJECT_ROOT) / "data" / "landing").rglob("*"))
    assert before == after  # the shipped sample is untouched


def test_generate_refuses_to_replace_landing_files_unless_asked(tmp_path, capsys):
    args = ["generate", "--profiles", "20", "--days", "2", "--seed", "3", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    target = tmp_path / "events" / "date=2026-11-02" / "events-2026-11-02.ndjson"
    first = target.read_bytes()
    target.write_text("edited by hand\n")
    capsys.readouterr()

    assert cli.main([*args[:-2], "--seed", "4", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} already holds landing files for 2 of these days (2026-11-01..2026-11-02)" in err
    assert "--overwrite" in err
    assert target.read_text() == "edited by hand\n"  # nothing replaced

    assert cli.main([*args, "--overwrite"]) == 0
    assert target.read_bytes() == first
    # other days of the same folder are free to generate into
    assert cli.main([*args[:-2], "--start", "2026-11-03", "--out", str(tmp_path)]) == 0


def test_instance_template_is_not_in_the_project_root():
    """`dg dev` / `dagster dev` warn about a dagster.yaml in the folder they start from when
    DAGSTER_HOME is elsewhere ("will not be used"): the template lives in deploy/."""
    root = Path(settings.PROJECT_ROOT)
    assert not (root / "dagster.yaml").exists() and not (root / "dagster.yml").exists()
    assert root / "deploy" / "dagster.yaml" == settings.INSTANCE_TEMPLATE
    assert "run_queue:" in settings.INSTANCE_TEMPLATE.read_text()


def test_console_script_help_runs():
    proc = subprocess.run([sys.executable, "-m", "segment_pipeline.cli", "demo", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "--verbose" in proc.stdout and "default: the sample's first day" in proc.stdout
