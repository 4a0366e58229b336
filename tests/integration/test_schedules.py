"""`tfship ci schedule create` against the CircleCI stand-in: each --param adds to
retrain=true, values take the types the config declares (a string parameter stays a string),
values over CircleCI's 512 characters are refused with the fix, and several schedules each keep
their own parameters (the orb's nightly-and-weekly example)."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from circleci_standin import GOOD_TOKEN
from helpers import ROOT, clean_env, run_cli
from tfship.ci.api import parse_params, schedule_parameters
from tfship.errors import ConfigError

pytestmark = pytest.mark.timeout(120)
SLUG = "gh/acme/models"
EXAMPLE = ROOT / "orb" / "src" / "examples" / "nightly_and_weekly_schedules.yml"
SNAPSHOTS = "data_uri=s3://acme-data/digits/snapshots/"


@pytest.fixture
def config(tmp_path) -> Path:
    """The orb example's config (retrain boolean; data_uri and retrain_args strings)."""
    path = tmp_path / ".circleci" / "config.yml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(yaml.safe_load(EXAMPLE.read_text())["usage"]))
    return path


def schedule(api, config: Path, *args: str):
    env = clean_env(CIRCLE_TOKEN=GOOD_TOKEN, CIRCLE_PROJECT_SLUG=SLUG, CIRCLECI_API_URL=api.url)
    r = run_cli("ci", "schedule", "create", *args, "--json", cwd=config.parent.parent, env=env)
    assert GOOD_TOKEN not in r.out + r.err
    return r


def posted(api) -> list[dict]:
    """The bodies of the createSchedule requests the stand-in received."""
    return [json.loads(r["body"]) for r in api.state.requests if r["operation"] == "createSchedule"]


def test_params_add_to_retrain_and_string_parameters_stay_strings(api, config):
    r = schedule(api, config, "--param", "retrain_args=true", "--param", "data_uri=123")
    assert r.code == 0, r.err
    [body] = posted(api)
    assert body["parameters"] == {
        "branch": "main",
        "retrain": True,
        "retrain_args": "true",  # declared a string: not the boolean true
        "data_uri": "123",  # nor the number 123
    }
    [stored] = api.state.schedules.values()
    assert stored["parameters"] == body["parameters"]


def test_the_examples_two_schedules_keep_their_own_parameters(api, config):
    weekdays = [a for day in ("MON", "TUE", "WED", "THU", "FRI", "SAT") for a in ("--day", day)]
    nightly = schedule(
        api, config, "--name", "nightly-fine-tune", "--hour", "2", *weekdays, "--param", SNAPSHOTS
    )
    weekly = schedule(
        api,
        config,
        "--name",
        "weekly-from-scratch",
        "--hour",
        "2",
        "--day",
        "SUN",
        "--param",
        SNAPSHOTS,
        "--param",
        "retrain_args=--from-scratch",
    )
    assert nightly.code == 0 and weekly.code == 0, nightly.err + weekly.err
    by_name = {s["name"]: s for s in api.state.schedules.values()}
    uri = SNAPSHOTS.partition("=")[2]
    assert by_name["nightly-fine-tune"]["parameters"] == {
        "branch": "main",
        "retrain": True,
        "data_uri": uri,
    }
    assert by_name["weekly-from-scratch"]["parameters"] == {
        "branch": "main",
        "retrain": True,
        "data_uri": uri,
        "retrain_args": "--from-scratch",
    }
    assert by_name["weekly-from-scratch"]["timetable"]["days-of-week"] == ["SUN"]
    assert "SUN" not in by_name["nightly-fine-tune"]["timetable"]["days-of-week"]


def test_a_value_over_512_characters_is_refused_with_the_fix(api, config):
    r = schedule(api, config, "--param", "retrain_args=" + "--tolerance 0.01 " * 31)
    assert r.code == 2 and posted(api) == []
    [line] = r.err_lines
    assert "pipeline parameter retrain_args is 527 characters; CircleCI takes at most 512" in line
    assert "put the value in a file in the repository or a bucket and pass its path or URI" in line


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("retrian=true", "the config declares no pipeline parameter 'retrian'"),
        ("retrain=yes", "retrain is a boolean; give true or false"),
    ],
)
def test_a_parameter_the_config_would_reject_is_refused_before_sending(api, config, param, message):
    r = schedule(api, config, "--param", param)
    assert r.code == 2 and posted(api) == []
    [line] = r.err_lines
    assert line.startswith("tfship ci schedule create: bad setting: ") and message in line


def test_a_config_without_the_retrain_switch_is_refused(api, config):
    doc = yaml.safe_load(config.read_text())
    del doc["parameters"]["retrain"]
    config.write_text(yaml.safe_dump(doc))
    r = schedule(api, config)
    assert r.code == 2 and posted(api) == []
    assert "the config declares no pipeline parameter 'retrain'" in r.err_lines[0]


def test_typing_by_declaration():
    declared = {
        "retrain": {"type": "boolean", "default": False},
        "epochs": {"type": "integer", "default": 10},
        "size": {"type": "enum", "enum": ["small", "large"], "default": "small"},
        "note": {"type": "string", "default": ""},
        "bare": {},  # no type: CircleCI's default, a string
    }
    got = parse_params(("epochs=20", "size=large", "note=007", "bare=false"), declared)
    assert got == {"epochs": 20, "size": "large", "note": "007", "bare": "false"}
    assert schedule_parameters(("retrain=false",), declared) == {"retrain": False}
    for bad, message in (
        ("epochs=many", "epochs is an integer"),
        ("size=huge", "size is one of ['small', 'large']"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_params((bad,), declared)


def test_the_schedules_example_is_a_valid_config_with_the_orb():
    sys.path.insert(0, str(ROOT / "tools"))
    import check_orb

    orb = yaml.safe_load((ROOT / "orb" / "orb.yml").read_text())
    usage = copy.deepcopy(orb["examples"]["nightly_and_weekly_schedules"]["usage"])
    usage["orbs"]["tfship"] = orb
    assert check_orb.check_config(usage) == []
