"""The orb and .circleci/config.yml: packed from source, schema-valid, lint-clean, and checked
by the project's own rules (each rule shown to fire on a broken copy)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import check_orb  # noqa: E402
import pack_orb  # noqa: E402

# The dev tools live beside the interpreter running the tests (the project's .venv).
CHECK_JSONSCHEMA = str(Path(sys.executable).parent / "check-jsonschema")

CONFIG = yaml.safe_load((ROOT / ".circleci" / "config.yml").read_text())
ORB = pack_orb.pack()


def test_inline_orb_and_packed_orb_match_the_source():
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "pack_orb.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert CONFIG["orbs"]["tfship"] == ORB
    assert yaml.safe_load((ROOT / "orb" / "orb.yml").read_text()) == ORB


def test_packing_inlines_scripts_and_escapes_parameter_syntax():
    run = ORB["commands"]["build"]["steps"][0]["run"]
    script = (ROOT / "orb" / "src" / "scripts" / "run_stage.sh").read_text()
    assert run["command"] == script.replace("<<", "\\<<")
    assert "\\<<<" in run["command"]  # the here-string is escaped, not substituted
    assert set(ORB) >= {
        "version",
        "description",
        "display",
        "commands",
        "jobs",
        "executors",
        "examples",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("command: echo <<include(scripts/x.sh)>>", "must be the whole value"),
        ("command: <<include(../../pyproject.toml)>>", "is not a file under"),
    ],
)
def test_packer_refuses_what_orb_pack_would_not_do(tmp_path, text, message):
    src = tmp_path / "src"
    (src / "commands").mkdir(parents=True)
    (src / "@orb.yml").write_text("version: 2.1\n")
    (src / "commands" / "c.yml").write_text(f"steps:\n  - run:\n      name: x\n      {text}\n")
    with pytest.raises(pack_orb.PackError, match=message):
        pack_orb.pack(src)


def test_unknown_source_folders_are_refused(tmp_path):
    (tmp_path / "src" / "widgets").mkdir(parents=True)
    (tmp_path / "src" / "@orb.yml").write_text("version: 2.1\n")
    with pytest.raises(pack_orb.PackError, match="unsupported folders"):
        pack_orb.pack(tmp_path / "src")


@pytest.mark.parametrize("path", [".circleci/config.yml", "orb/orb.yml"])
def test_circleci_schema_accepts_config_and_orb(path):
    r = subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.circle-ci", str(ROOT / path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_yamllint_is_clean():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "yamllint",
            "-f",
            "parsable",
            ".circleci/config.yml",
            "orb/orb.yml",
            "orb/src",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    errors = [line for line in r.stdout.splitlines() if "[error]" in line]
    assert r.returncode == 0 and errors == [], r.stdout


def test_the_projects_own_checks_pass():
    assert check_orb.review(ROOT / "orb" / "src") == []
    assert check_orb.check_orb(ORB) == []
    assert check_orb.check_config(CONFIG) == []


def test_workflows_are_wired_as_documented():
    wf = CONFIG["workflows"]
    retrain = [next(iter(j)) if isinstance(j, dict) else j for j in wf["retrain-deploy"]["jobs"]]
    assert retrain == [
        "tfship/build",
        "tfship/retrain",
        "hold",
        "tfship/package",
        "tfship/deploy",
        "tfship/test_deployment",
    ]
    hold = wf["retrain-deploy"]["jobs"][2]["hold"]
    assert hold == {"type": "approval", "requires": ["retrain"]}
    assert wf["retrain-deploy"]["when"] == "<< pipeline.parameters.retrain >>"
    assert (
        wf["retrain-deploy"]["jobs"][0]["tfship/build"]["data"]
        == "<< pipeline.parameters.data_uri >>"
    )
    assert set(CONFIG["parameters"]) == {"retrain", "data_uri", "approve_deploy"}
    for job in ORB["jobs"].values():  # every job ends with the failure hook
        assert next(iter(job["steps"][-1])) == "notify"


def _config(mutate) -> list[str]:
    c = copy.deepcopy(CONFIG)
    mutate(c)
    return check_orb.check_config(c)


def _jobs(c, wf="retrain-deploy"):
    return c["workflows"][wf]["jobs"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: _jobs(c)[2]["hold"].update(type="aproval"), "type 'aproval'"),
        (
            lambda c: _jobs(c)[3]["tfship/package"].update(requirs=["hold"]),
            "takes no argument 'requirs'",
        ),
        (lambda c: _jobs(c).append({"tfship/nope": {}}), "job 'tfship/nope' is not defined"),
        (
            lambda c: _jobs(c)[4]["tfship/deploy"].update(requires=["holdd"]),
            "requires 'holdd', which is not a job",
        ),
        (
            lambda c: _jobs(c).append({"tfship/build": {"type": "approval", "name": "x"}}),
            "approval job must not be named like a defined job",
        ),
        (
            lambda c: c["workflows"]["retrain-deploy"].update(
                when="<< pipeline.parameters.nightly >>"
            ),
            "pipeline.parameters.nightly >> is used but not declared",
        ),
        (
            lambda c: c["parameters"].update(mode={"type": "enum", "enum": ["a"], "default": "b"}),
            "default 'b' is not in its enum",
        ),
        (
            lambda c: c["workflows"]["build-deploy"].update(
                triggers=[{"schedule": {"cron": "0 25 * * *", "filters": {}}}]
            ),
            "invalid cron",
        ),
        (lambda c: c.update(workflow={}), "unknown top-level key 'workflow'"),
        (
            lambda c: c["orbs"]["tfship"]["jobs"]["build"]["steps"].append("buidl"),
            "step 'buidl' is neither a built-in step nor a command",
        ),
        (
            lambda c: c["orbs"]["tfship"]["jobs"]["train"]["steps"][3]["train"].update(epoch="3"),
            "takes no argument 'epoch'",
        ),
        (
            lambda c: c["orbs"]["tfship"]["commands"]["report"]["steps"][0][
                "store_test_results"
            ].update(path="<< parameters.result >>"),
            "<< parameters.result >> is used but not declared",
        ),
        (
            lambda c: c["orbs"]["tfship"]["jobs"]["test"]["parameters"]["executor"].update(
                default="gpu"
            ),
            "default 'gpu' is not a defined executor",
        ),
    ],
)
def test_each_config_check_fires(mutate, message):
    problems = _config(mutate)
    assert any(message in p for p in problems), problems


def test_the_schema_misses_what_our_checks_catch(tmp_path):
    broken = copy.deepcopy(CONFIG)
    _jobs(broken)[2]["hold"]["type"] = "aproval"
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(broken))
    r = subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.circle-ci", str(path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0  # the schema lets it through ...
    assert any("aproval" in p for p in check_orb.check_config(broken))  # ... we do not


@pytest.mark.parametrize(
    ("path", "edit", "message"),
    [
        ("@orb.yml", lambda d: d["display"].pop("source_url"), "RC001"),
        ("commands/report.yml", lambda d: d.pop("description"), "RC002"),
        ("@orb.yml", lambda d: d.update(description="Too short."), "RC005"),
        ("commands/notify.yml", lambda d: d["steps"][0]["run"].pop("name"), "RC008"),
        ("commands/notify.yml", lambda d: d["steps"][1]["run"].update(command="x" * 65), "RC009"),
        (
            "commands/install.yml",
            lambda d: d["parameters"].update(cacheVersion={"type": "string"}),
            "RC010",
        ),
        (
            "commands/install.yml",
            lambda d: d["steps"][0]["restore_cache"]["keys"].append("pip-$CIRCLE_BRANCH"),
            "RC012",
        ),
    ],
)
def test_each_review_rule_fires(tmp_path, path, edit, message):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(ROOT / "orb" / "src", src)
    doc = yaml.safe_load((src / path).read_text())
    edit(doc)
    (src / path).write_text(yaml.safe_dump(doc, sort_keys=False))
    assert any(p.startswith(message) for p in check_orb.review(src))


def test_no_examples_fires_rc003(tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(ROOT / "orb" / "src", src)
    shutil.rmtree(src / "examples")
    assert any(p.startswith("RC003") for p in check_orb.review(src))
