"""The orb and .circleci/config.yml: packed from source, schema-valid, lint-clean, and checked
by the project's own rules (each rule shown to fire on a broken copy)."""

from __future__ import annotations

import copy
import functools
import itertools
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, run_cli

sys.path.insert(0, str(ROOT / "tools"))
import check_orb  # noqa: E402
import pack_orb  # noqa: E402

# The dev tools live beside the interpreter running the tests (the project's .venv).
CHECK_JSONSCHEMA = str(Path(sys.executable).parent / "check-jsonschema")

# The continuation config holds the workflows; the setup config (config.yml) continues with it.
CONFIG = yaml.safe_load((ROOT / ".circleci" / "continue.yml").read_text())
SETUP = yaml.safe_load((ROOT / ".circleci" / "config.yml").read_text())
# The orb's release pipeline: release.yml (setup) continues with release-test.yml.
RELEASE = yaml.safe_load(check_orb.RELEASE.read_text())
RELEASE_TEST = yaml.safe_load(check_orb.RELEASE_TEST.read_text())
ORB = pack_orb.pack()


def test_inline_orb_and_packed_orb_match_the_source():
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "pack_orb.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert CONFIG["orbs"]["tfship"] == ORB and SETUP["orbs"]["tfship"] == ORB
    assert yaml.safe_load((ROOT / "orb" / "orb.yml").read_text()) == ORB


def test_packing_inlines_scripts_and_escapes_parameter_syntax():
    run_stage = (ROOT / "orb" / "src" / "scripts" / "run_stage.sh").read_text()
    assert ORB["commands"]["build"]["steps"][0]["run"]["command"] == run_stage.replace("<<", "\\<<")
    run = ORB["commands"]["install"]["steps"][1]["run"]
    script = (ROOT / "orb" / "src" / "scripts" / "install.sh").read_text()
    assert run["command"] == script.replace("<<", "\\<<")
    assert "\\<<'PY'" in run["command"]  # the here-document is escaped, not substituted
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


def test_parameters_that_feed_a_setting_take_its_declared_help():
    from tfship.settings import REGISTRY

    epochs = REGISTRY["TFSHIP_EPOCHS"]
    for params in (ORB["commands"]["train"]["parameters"], ORB["jobs"]["train"]["parameters"]):
        text = params["epochs"]["description"]
        assert text.startswith(epochs.help.rstrip("."))
        assert f"empty: the job's $TFSHIP_EPOCHS, else {epochs.default}" in text
    fmt = ORB["commands"]["notify"]["parameters"]["format"]["description"]
    assert fmt.startswith(REGISTRY["TFSHIP_NOTIFY_FORMAT"].help.rstrip("."))
    assert "`--format`" in fmt
    # a job parameter handed to a command parameter gets the same text
    assert (
        ORB["jobs"]["deploy"]["parameters"]["ssh_key_env"]["description"]
        == ORB["commands"]["deploy_model"]["parameters"]["ssh_key_env"]["description"]
    )


def _passes(steps: list, command: str) -> dict:
    """The parameters a job's steps hand to the orb command ``command``."""
    for step in steps:
        if isinstance(step, dict) and command in step:
            return step[command] or {}
    raise AssertionError(f"no {command} step")


@pytest.mark.parametrize(
    ("job", "command"),
    [
        ("plan", "plan"),
        ("retrain", "retrain"),
        ("deploy", "deploy_model"),
        ("test_deployment", "test_deployment"),
    ],
)
def test_every_job_that_reaches_the_serving_host_takes_its_keys_and_tunnel(job, command):
    """plan and retrain ask TF Serving which version serves, as deploy and verify do: a host
    whose TF Serving is on its loopback only (install_server.sh --tunnel) and whose key comes
    from add_ssh_keys must be reachable from all four."""
    for name in ("ssh_fingerprints", "serving_tunnel"):
        assert name in ORB["commands"][command]["parameters"], (command, name)
        assert name in ORB["jobs"][job]["parameters"], (job, name)
        handed = _passes(ORB["jobs"][job]["steps"], command)
        assert handed.get(name) == f"<< parameters.{name} >>", (job, name)


def test_a_hand_written_description_of_a_setting_fed_parameter_is_refused(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "orb" / "src", src)
    train = src / "commands" / "train.yml"
    text = train.read_text()
    assert "  epochs:\n    type: string" in text
    train.write_text(text.replace("  epochs:\n", "  epochs:\n    description: Maximum epochs.\n"))
    with pytest.raises(pack_orb.PackError, match="parameter epochs feeds tfship's TFSHIP_EPOCHS"):
        pack_orb.pack(src)


def test_unknown_source_folders_are_refused(tmp_path):
    (tmp_path / "src" / "widgets").mkdir(parents=True)
    (tmp_path / "src" / "@orb.yml").write_text("version: 2.1\n")
    with pytest.raises(pack_orb.PackError, match="unsupported folders"):
        pack_orb.pack(tmp_path / "src")


@pytest.mark.parametrize(
    "path",
    [
        ".circleci/config.yml",
        ".circleci/continue.yml",
        ".circleci/release.yml",
        ".circleci/release-test.yml",
        "orb/orb.yml",
    ],
)
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
            ".circleci/continue.yml",
            ".circleci/release.yml",
            ".circleci/release-test.yml",
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
    assert check_orb.check_config(SETUP) == []
    assert check_orb.check_phases(SETUP, CONFIG) == []
    assert check_orb.check_config(RELEASE) == []
    assert check_orb.check_config(check_orb.with_this_orb(RELEASE_TEST, ORB)) == []
    assert check_orb.check_release(RELEASE, RELEASE_TEST) == []
    assert check_orb.check_phases(CONFIG, SETUP) == [
        "continue.yml: declares no new_data_uri (config.yml's pipeline parameters carry into "
        "the continuation)",
        "config.yml: not a setup config (setup: true)",
        "continue.yml: a continuation config cannot itself be a setup config",
    ]


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
    assert hold == {
        "type": "approval",
        "requires": ["retrain"],
        "filters": {"branches": {"only": "main"}},
    }
    assert wf["retrain-deploy"]["when"] == "<< pipeline.parameters.retrain >>"
    assert (
        wf["retrain-deploy"]["jobs"][0]["tfship/build"]["data"]
        == "<< pipeline.parameters.new_data_uri >>"
    )
    assert set(CONFIG["parameters"]) == {"retrain", "data_uri", "approve_deploy", "new_data_uri"}
    # The setup config takes what triggers send and runs plan (retrain) or continue (a push).
    assert SETUP["setup"] is True and set(SETUP["parameters"]) == {
        "retrain",
        "data_uri",
        "approve_deploy",
    }
    assert SETUP["workflows"]["plan"]["when"] == "<< pipeline.parameters.retrain >>"
    assert next(iter(SETUP["workflows"]["plan"]["jobs"][0])) == "tfship/plan"
    assert SETUP["workflows"]["continue"]["unless"] == "<< pipeline.parameters.retrain >>"
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
                default="tpu"
            ),
            "default 'tpu' is not a defined executor",
        ),
    ],
)
def test_each_config_check_fires(mutate, message):
    problems = _config(mutate)
    assert any(message in p for p in problems), problems


# --------------------------------------------------------------------------------------------
# Branch filters, the project's own checks, and the orb release (issue #19)
# --------------------------------------------------------------------------------------------

DEPLOYING = {"hold", "deploy", "test_deployment"}


def _planned(doc: dict, workflow: str, branch: str, slug: str = "gh/tfship/tfship", **params):
    """The jobs `tfship ci local`'s planner gives a workflow (name -> filtered out?) and
    whether its when/unless lets it run, for a CircleCI project slug."""
    from tfship.ci.workflow import plan

    jobs, runs = plan(doc, workflow, params, branch, extra_pipeline={"project_slug": slug})
    return {j.name: j.skipped for j in jobs}, runs


@pytest.mark.parametrize("workflow", ["build-deploy", "build-deploy-approved", "retrain-deploy"])
def test_every_workflow_that_deploys_deploys_and_holds_on_main_only(workflow):
    on_main, _ = _planned(CONFIG, workflow, "main")
    on_branch, _ = _planned(CONFIG, workflow, "feature/x")
    assert not any(on_main.values())  # main runs everything, the hold included
    filtered = {name for name, skipped in on_branch.items() if skipped}
    # In retrain-deploy, package only feeds the deploy (after the hold), and retrain would
    # announce a hold that is filtered out; on a push, package is a check.
    expected = DEPLOYING | ({"package", "retrain"} if workflow == "retrain-deploy" else set())
    assert filtered == expected & set(on_branch)
    assert "deploy" in filtered
    if "hold" in on_branch:  # no hold waits where nothing would deploy after it
        assert on_branch["hold"]


def test_checks_run_on_every_push_but_not_on_a_retrain_or_under_tfship_ci_local():
    assert _planned(CONFIG, "checks", "feature/x") == ({"checks": False}, True)
    assert _planned(CONFIG, "checks", "main", approve_deploy=True)[1] is True
    assert _planned(CONFIG, "checks", "main", retrain=True)[1] is False
    # tfship ci local's slug: the tests that run continue.yml locally must not run the suite.
    assert _planned(CONFIG, "checks", "main", slug="local/project")[1] is False


def test_the_checks_job_runs_lint_the_orb_checks_and_the_tests_on_ubuntu_2404():
    job = CONFIG["jobs"]["checks"]
    assert job["machine"]["image"].startswith("ubuntu-2404:")
    runs = [s["run"]["command"] for s in job["steps"] if isinstance(s, dict) and "run" in s]
    text = "\n".join(runs)
    for command in (
        'git clone --depth 1 "$TFSHIP_SHARED_REPO" ../shared',  # the tests read ../shared
        "tools/setup.sh --test",
        ".venv/bin/ruff check ml tests bench examples tools",
        ".venv/bin/ruff format --check ml tests bench examples",
        ".venv/bin/python tools/pack_orb.py --check",
        ".venv/bin/python tools/check_orb.py",
        "--junitxml=test-results/",
    ):
        assert command in text, command
    assert job["steps"][0] == "checkout"
    assert job["steps"][-1] == {"store_test_results": {"path": "test-results"}}
    assert SETUP["workflows"]["continue"]["unless"] == "<< pipeline.parameters.retrain >>"


def _order(doc: dict) -> dict[str, tuple[str, dict]]:
    (wf,) = doc["workflows"].values()
    return check_orb._entries(wf)


def test_the_release_publishes_dev_then_integration_tests_it_then_production_on_a_tag():
    release, test = _order(RELEASE), _order(RELEASE_TEST)
    assert RELEASE["setup"] is True and "setup" not in RELEASE_TEST
    # release.yml: pack, review and shellcheck -> publish dev -> continue with release-test.yml
    assert release["publish_dev"][1]["pub_type"] == "dev"
    assert check_orb._upstream(release, "publish_dev") == {
        "orb-tools/pack",
        "orb-tools/review",
        "shellcheck/check",
    }
    cont = release["orb-tools/continue"][1]
    assert cont["requires"] == ["publish_dev"] and cont["inject_orb"] is False
    assert cont["config_path"] == ".circleci/release-test.yml"
    # release-test.yml loads the very dev version published, and tests it first
    assert release["publish_dev"][1]["dev_tags"] == "dev:<< pipeline.git.revision >>"
    assert RELEASE_TEST["orbs"]["tfship"] == "tfship/tfship@dev:<< pipeline.git.revision >>"
    prod = test["publish_release"][1]
    assert prod["pub_type"] == "production" and prod["orb_name"] == "tfship/tfship"
    assert check_orb._upstream(test, "publish_release") == set(test) - {"publish_release"}
    assert [test[n][0] for n in ("build", "train", "test", "package")] == [
        "tfship/build",
        "tfship/train",
        "tfship/test",
        "tfship/package",
    ]
    # production only on a semver tag; everything before it on every branch and tag
    tags = {t: check_orb.runs_on_tag(prod["filters"], t) for t in ("v1.2.3", "v10.0.12")}
    assert tags == {"v1.2.3": True, "v10.0.12": True}
    for tag in ("v1.2", "1.2.3", "v1.2.3-rc.1", "vX.Y.Z"):
        assert not check_orb.runs_on_tag(prod["filters"], tag), tag
    assert not check_orb.runs_on_branch(prod["filters"], "main")
    # the Python package the orb installs by default goes to PyPI first, on the tag alone
    python = test["publish_python"][1]
    assert python["filters"] == prod["filters"] and python["context"] == "pypi-publishing"
    assert "publish_python" in check_orb._upstream(test, "publish_release")
    for name, (_, args) in [*release.items(), *test.items()]:
        if name not in ("publish_release", "publish_python"):
            assert check_orb.runs_on_tag(args["filters"], "v1.2.3"), name
            assert check_orb.runs_on_branch(args["filters"], "main"), name


def _release_problems(mutate) -> list[str]:
    release, test = copy.deepcopy(RELEASE), copy.deepcopy(RELEASE_TEST)
    mutate(release, test)
    problems = check_orb.check_release(release, test)
    problems += check_orb.check_config(release)
    return problems + check_orb.check_config(check_orb.with_this_orb(test, ORB))


def _entry(doc: dict, name: str) -> dict:
    (wf,) = doc["workflows"].values()
    for entry in wf["jobs"]:
        job, args = next(iter(entry.items()))
        if args.get("name", job) == name:
            return args
    raise KeyError(name)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda r, t: _entry(t, "publish_release").update(requires=["package"]),
            "publish_release does not wait for plan_without_champion, publish_python",
        ),
        (
            lambda r, t: _entry(t, "publish_release").update(
                requires=["package", "plan_without_champion"]
            ),
            "does not wait for a job that publishes the Python package",
        ),
        (
            lambda r, t: _entry(t, "publish_release").update(filters={"tags": {"only": "/.*/"}}),
            "runs on tags other than vX.Y.Z",
        ),
        (
            lambda r, t: _entry(t, "publish_release")["filters"].pop("branches"),
            "runs on a branch",
        ),
        (
            lambda r, t: _entry(t, "train").pop("filters"),
            "waits for train, which does not run on v1.2.3",
        ),
        (
            lambda r, t: _entry(r, "orb-tools/continue").update(requires=["orb-tools/pack"]),
            "does not wait for publish_dev",
        ),
        (
            lambda r, t: _entry(r, "publish_dev").update(requires=["orb-tools/pack"]),
            "publish_dev does not wait for orb-tools/review",
        ),
        (
            lambda r, t: _entry(r, "orb-tools/continue").update(inject_orb=True),
            "inject_orb: false",
        ),
        (lambda r, t: t["orbs"].update(tfship="tfship/tfship@1.0"), "not a dev version"),
        (lambda r, t: _entry(r, "shellcheck/check").pop("filters"), "does not run on a tag"),
        (lambda r, t: r.pop("setup"), "release.yml: not a setup config"),
        (
            lambda r, t: _entry(r, "publish_dev").update({"pub-type": "dev"}),
            "job 'orb-tools/publish' takes no argument 'pub-type'",  # v11's name
        ),
        (
            lambda r, t: _entry(r, "orb-tools/continue").pop("pipeline_number"),
            "needs argument 'pipeline_number'",
        ),
        (
            lambda r, t: _entry(t, "train").update(epoch="6"),
            "job 'tfship/train' takes no argument 'epoch'",
        ),
    ],
)
def test_each_release_check_fires(mutate, message):
    problems = _release_problems(mutate)
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


# --------------------------------------------------------------------------------------------
# The orb against the CLI: every tfship option it shows users exists (run the real CLI's --help)
# --------------------------------------------------------------------------------------------


@functools.cache
def _cli_help(path: tuple[str, ...]) -> str:
    r = run_cli(*path, "--help", cwd=ROOT, timeout=60)
    assert r.code == 0, f"tfship {' '.join(path)} --help: {r.err}"
    return r.out


def _help_section(path: tuple[str, ...], title: str) -> list[str]:
    """The entry lines of one section of `tfship PATH --help` (click's layout)."""
    lines = _cli_help(path).split(f"\n{title}:\n", 1)[1:]
    section = lines[0].split("\n\n", 1)[0].splitlines() if lines else []
    # Entries start two spaces in; deeper lines continue an entry's help text.
    return [line.strip() for line in section if re.match(r"  \S", line)]


@functools.cache
def _cli_flags(path: tuple[str, ...]) -> frozenset[str]:
    """Options of `tfship PATH`, read from the option column only: help texts mention flags of
    other programs (deploy's --base-path cites TF Serving's --model_base_path)."""
    flags: set[str] = set()
    for entry in _help_section(path, "Options"):
        names = re.split(r"\s{2,}", entry)[0]  # "-h, --help", "--require-all / --no-require-all"
        flags.update(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", names))
    return frozenset(flags)


@functools.cache
def _cli_subcommands(path: tuple[str, ...]) -> frozenset[str]:
    return frozenset(entry.split()[0] for entry in _help_section(path, "Commands"))


def _flags(words: list[str]) -> list[str]:
    """The options among a command line's words (`--x=1` names --x; `-1` is a value)."""
    return [w.split("=", 1)[0] for w in words if re.match(r"--?[A-Za-z]", w)]


def _tfship_calls(text: str) -> list[tuple[tuple[str, ...], list[str]]]:
    """Each `tfship ...` in a shell text: (its subcommand path, the words after it)."""
    # A comment starts only at a word's start (a URL's #sha256=... is not one), which shlex
    # cannot tell, so comments go first.
    text = re.sub(r"(^|\s)#.*$", "", text, flags=re.M)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    calls, words = [], []
    for token in [*lexer, ";"]:
        if token.strip("();<>|&"):
            words.append(token)
            continue
        # `&&`, `|`, `;`... end one simple command.
        tfship = [i for i, w in enumerate(words) if w == "tfship" or w.endswith("/tfship")]
        if tfship:
            path: tuple[str, ...] = ()
            args = words[tfship[0] + 1 :]
            while args and args[0] in _cli_subcommands(path):
                path, args = (*path, args[0]), args[1:]
            calls.append((path, args))
        words = []
    return calls


def _stage(kind: str, name: str) -> str | None:
    """The tfship stage an orb command or job runs: the PARAM_STAGE of the command's run step
    and the subcommand its extra args start with (plan: "ci plan"); for a job, that of the
    command it hands its extra_args to."""
    for step in ORB[kind][name].get("steps", []):
        step_name, args = next(iter(step.items())) if isinstance(step, dict) else (step, {})
        if kind == "commands" and step_name == "run":
            env = args.get("environment") or {}
            words = str(env.get("PARAM_EXTRA_ARGS", "")).split()
            sub = list(itertools.takewhile(lambda w: w.isidentifier(), words))
            return " ".join([env["PARAM_STAGE"], *sub]) if env.get("PARAM_STAGE") else None
        if kind == "jobs" and (args or {}).get("extra_args") == "<< parameters.extra_args >>":
            return _stage("commands", step_name)
    return None


# Where a key's children are jobs (workflow entries) or commands (steps) of the orb.
_CHILD_KIND = {
    "workflows": "jobs",
    "steps": "commands",
    "pre-steps": "commands",
    "post-steps": "commands",
}


def _flag_uses(example: dict) -> list[tuple[tuple[str, ...], str]]:
    """(subcommand path, flag) for each tfship option an example shows: in `code` of its
    description, in its run commands and in the extra_args it gives the orb's jobs or commands."""
    uses = [
        (path, flag)
        for code in re.findall(r"`([^`]*)`", example.get("description", ""))
        for path, words in _tfship_calls(code)
        for flag in _flags(words)
    ]

    def walk(node, kind: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if key == "run":
                command = value.get("command", "") if isinstance(value, dict) else value
                uses.extend((p, f) for p, words in _tfship_calls(command) for f in _flags(words))
            elif (
                str(key).startswith("tfship/") and isinstance(value, dict) and "extra_args" in value
            ):
                stage = _stage(kind, key.removeprefix("tfship/"))
                assert stage, f"{key} takes extra_args but runs no stage"
                uses.extend(
                    (tuple(stage.split()), f) for f in _flags(shlex.split(value["extra_args"]))
                )
            if isinstance(value, dict | list):
                walk(value, _CHILD_KIND.get(key, kind))

    walk(example.get("usage") or {}, "jobs")
    return uses


def _unknown_flags(example: dict) -> list[tuple[tuple[str, ...], str]]:
    return [(path, flag) for path, flag in _flag_uses(example) if flag not in _cli_flags(path)]


def test_every_tfship_flag_in_the_examples_is_an_option_of_its_command():
    uses = {name: _flag_uses(example) for name, example in ORB["examples"].items()}
    # The examples show extra_args and `tfship ci` calls: finding none means the reader broke.
    assert (("train",), "--batch-size") in uses["build_and_deploy"]
    assert (("ci", "trigger"), "--param") in uses["retrain_on_new_data"]
    unknown = {name: _unknown_flags(example) for name, example in ORB["examples"].items()}
    assert unknown == {name: [] for name in ORB["examples"]}


def test_the_example_check_finds_flags_the_cli_lacks():
    example = {
        "description": "Trigger with `tfship ci trigger --parameter retrain=true`.",
        "usage": {
            "workflows": {"w": {"jobs": [{"tfship/build": {"extra_args": "--epochs 20"}}]}},
            "jobs": {
                "custom": {
                    "steps": [
                        {"tfship/deploy_model": {"extra_args": "--keep 2 --canary 5"}},
                        {
                            "run": {
                                "name": "n",
                                "command": "cd x && tfship test-deployed --sample 5",
                            }
                        },
                        {"run": "tfship train --epochs 3 # --not-a-flag, a comment"},
                    ]
                }
            },
        },
    }
    assert _unknown_flags(example) == [
        (("ci", "trigger"), "--parameter"),
        (("build",), "--epochs"),
        (("deploy",), "--canary"),
        (("test-deployed",), "--sample"),
    ]


_EXTRA_ARGS = [
    (kind, name)
    for kind in ("commands", "jobs")
    for name, body in ORB[kind].items()
    if "extra_args" in (body.get("parameters") or {})
]


def test_every_stage_command_and_job_takes_extra_args():
    assert len(_EXTRA_ARGS) == 16  # seven stages and `ci plan`, each a command and a job


@pytest.mark.parametrize(("kind", "name"), _EXTRA_ARGS, ids=lambda v: v)
def test_extra_args_example_is_an_option_of_the_stage(kind, name):
    stage = _stage(kind, name)
    text = ORB[kind][name]["parameters"]["extra_args"]["description"]
    assert f"`tfship {stage}`" in text
    example = re.search(r'e\.g\. "([^"]+)"', text)
    assert example, text
    flags = _flags(shlex.split(example.group(1)))
    assert flags and set(flags) <= _cli_flags(tuple(stage.split())), (stage, flags)


# --------------------------------------------------------------------------------------------
# install: every job takes the pip requirement; only the jobs that build a model get TensorFlow
# --------------------------------------------------------------------------------------------

TRAINING_JOBS = {"build", "train", "test", "package", "retrain"}


def test_every_job_takes_the_pip_requirement_and_only_training_jobs_the_train_extra():
    installing = set()
    for name, job in ORB["jobs"].items():
        steps = [s["install"] for s in job["steps"] if isinstance(s, dict) and "install" in s]
        if not steps:
            continue
        installing.add(name)
        (step,) = steps
        assert "package" in job["parameters"], name
        assert step["package"] == "<< parameters.package >>", name
        assert step["train"] is (name in TRAINING_JOBS), name
    assert installing >= TRAINING_JOBS | {"deploy", "test_deployment"}


def test_the_orbs_pins_are_uv_locks_and_reach_the_install_step():
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "orb_pins.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    source = yaml.safe_load((ROOT / "orb" / "src" / "commands" / "install.yml").read_text())
    env = next(s["run"] for s in source["steps"] if "run" in s)["environment"]
    assert env["PARAM_CONSTRAINTS"] == "<<include(scripts/install_constraints.txt)>>"
    pins = (ROOT / "orb" / "src" / "scripts" / "install_constraints.txt").read_text()
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert pins.splitlines()[1] == f"tfship=={version.group(1)}"  # the release itself first
    assert re.search(r"^tensorflow==", pins, re.M) and re.search(r"^boto3==", pins, re.M)


def test_the_configs_teams_copy_deploy_and_hold_on_main_only_in_a_serial_group():
    """Every orb example and the example team repository: deploys and holds on main only,
    in a serial-group, with a context; a retrain that announces a hold on main only."""
    examples = check_orb.example_configs(ORB)
    assert "orb example nightly_retrain_with_approval" in examples
    assert "examples/team_repo/.circleci/continue.yml" in examples
    for label, config in examples.items():
        assert check_orb.check_deploy_rules(config, label) == [], label
    assert check_orb.check_deploy_rules(CONFIG, "continue.yml", contexts=False) == []


@pytest.mark.parametrize(
    ("alias", "mutate", "message"),
    [
        ("tfship/deploy", lambda a: a.pop("filters"), "runs on every branch"),
        ("tfship/deploy", lambda a: a.pop("serial-group"), "deploys without a serial-group"),
        ("tfship/deploy", lambda a: a.pop("context"), "takes no context"),
        ("hold", lambda a: a.pop("context"), "takes no context"),
        ("hold", lambda a: a["filters"]["branches"].update(only="/.*/"), "every branch"),
        ("tfship/retrain", lambda a: a.pop("filters"), "runs on every branch"),
    ],
)
def test_each_deploy_rule_fires(alias, mutate, message):
    import copy

    usage = copy.deepcopy(ORB["examples"]["nightly_retrain_with_approval"]["usage"])
    for entry in usage["workflows"]["retrain-deploy"]["jobs"]:
        if isinstance(entry, dict) and alias in entry:
            mutate(entry[alias])
    problems = check_orb.check_deploy_rules(usage, "example")
    assert len(problems) == 1 and message in problems[0], problems
    assert f"job {alias}:" in problems[0]
