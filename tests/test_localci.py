"""The local CircleCI runner's semantics, on small configs with shell steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import clean_env
from tfship.ci.local import Runner, summary
from tfship.ci.workflow import Unsupported, branch_allowed, plan, substitute, truth
from tfship.errors import ConfigError

CONFIG = yaml.safe_load("""
version: 2.1
parameters:
  flag: {type: boolean, default: false}
  word: {type: string, default: hi}
orbs:
  o:
    executors:
      e: {docker: [{image: x}]}
    commands:
      say:
        parameters:
          text: {type: string}
          after: {type: steps, default: []}
        steps:
          - run: {name: say, command: "echo '<< parameters.text >> \\\\<< escaped'"}
          - << parameters.after >>
    jobs:
      write:
        executor: e
        parameters:
          file: {type: string}
          fail: {type: boolean, default: false}
        steps:
          - run: {name: make, command: "mkdir -p ws && echo data > ws/<< parameters.file >>"}
          - when:
              condition: << parameters.fail >>
              steps: [{run: {name: boom, command: "exit 3"}}]
          - run: {name: skipped after failure, command: "echo should-not-run"}
          - run: {name: on fail, command: "echo FAILED-HOOK", when: on_fail}
          - run: {name: always, command: "echo ALWAYS-HOOK", when: always}
          - store_artifacts: {path: ws}
          - persist_to_workspace: {root: ., paths: [ws]}
      read:
        executor: e
        steps:
          - attach_workspace: {at: .}
          - run: {name: list, command: "ls ws | sort | tr '\\\\n' ' '"}
          - say:
              text: << pipeline.parameters.word >>
              after: [{run: {name: after, command: "echo AFTER"}}]
workflows:
  w:
    when: << pipeline.parameters.flag >>
    jobs:
      - o/write: {name: a, file: a.txt}
      - o/write: {name: b, file: b.txt}
      - o/read: {name: r, requires: [a]}
      - hold: {type: approval, requires: [r]}
      - o/write: {name: c, file: c.txt, requires: [hold], filters: {branches: {only: main}}}
""")


def run(tmp_path, params=None, decide=lambda n: None, branch="main", doc=CONFIG, fail_b=False):
    doc = yaml.safe_load(yaml.safe_dump(doc))
    if fail_b:
        doc["workflows"]["w"]["jobs"][1]["o/write"]["fail"] = True
    jobs, runs = plan(doc, "w", params or {"flag": True}, branch)
    lines: list[str] = []
    project = tmp_path / "project"
    project.mkdir(parents=True, exist_ok=True)
    runner = Runner(
        project,
        tmp_path / "out",
        {"PATH": "/usr/bin:/bin"},
        branch,
        decide,
        jobs=2,
        echo=lines.append,
    )
    return runner.run(jobs), "\n".join(lines), runs


def test_layers_only_from_upstream_jobs_and_parameters_expand(tmp_path):
    results, log, runs = run(
        tmp_path, {"flag": True, "word": "bonjour"}, decide=lambda n: "approve"
    )
    assert runs and {r.status for r in results.values()} == {"success"}
    assert "[r]   a.txt" in log  # r requires a only: b's layer is not attached
    assert "b.txt" not in log.split("[r]   ")[1].split("\n")[0]
    assert "[r]   bonjour << escaped" in log and "[r]   AFTER" in log


def test_after_a_failed_step_only_on_fail_always_and_store_steps_run(tmp_path):
    results, log, _ = run(tmp_path, decide=lambda n: "approve", fail_b=True)
    assert results["b"].status == "failed" and results["b"].failed_step == "boom"
    b = "\n".join(line for line in log.splitlines() if line.startswith("[b]"))
    assert "should-not-run" not in b
    assert "FAILED-HOOK" in b and "ALWAYS-HOOK" in b and "store_artifacts: ws" in b
    a = "\n".join(line for line in log.splitlines() if line.startswith("[a]"))
    assert "FAILED-HOOK" not in a and "ALWAYS-HOOK" in a


def test_a_hold_without_a_decision_blocks_what_follows(tmp_path):
    results, log, _ = run(tmp_path)
    assert results["hold"].status == "on_hold" and results["c"].status == "blocked"
    assert "--approve hold" in log
    text = summary(results, "w")
    assert "hold" in text and "on_hold" in text and "blocked" in text


def test_rejecting_a_hold_and_branch_filters(tmp_path):
    results, _, _ = run(tmp_path, decide=lambda n: "reject")
    assert results["hold"].status == "canceled" and results["c"].status == "not_run"
    results, _, _ = run(tmp_path / "x", decide=lambda n: "approve", branch="feature")
    assert results["c"].status == "not_run"


def test_an_approval_job_filtered_out_for_the_branch_holds_nothing(tmp_path):
    doc = yaml.safe_load(yaml.safe_dump(CONFIG))
    doc["workflows"]["w"]["jobs"][3]["hold"]["filters"] = {"branches": {"only": "main"}}
    asked: list[str] = []
    results, log, _ = run(tmp_path, decide=lambda n: asked.append(n), branch="feature", doc=doc)
    assert results["hold"].status == "not_run" and results["c"].status == "not_run"
    assert asked == [] and "[hold] filtered out for branch feature" in log
    results, _, _ = run(tmp_path / "main", decide=lambda n: asked.append(n), doc=doc)
    assert asked == ["hold"] and results["hold"].status == "on_hold"


def test_workflow_when_false_and_undeclared_parameters(tmp_path):
    _, runs = plan(CONFIG, "w", {}, "main")
    assert runs is False
    with pytest.raises(ConfigError, match="Unexpected argument"):
        plan(CONFIG, "w", {"nope": 1}, "main")
    with pytest.raises(ConfigError, match="is not a boolean"):
        plan(CONFIG, "w", {"flag": "maybe"}, "main")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["workflows"]["w"]["jobs"][0]["o/write"].update(matrix={}), "'matrix'"),
        (lambda d: d["orbs"].update(slack="circleci/slack@4.12"), "registry reference"),
        (lambda d: d["orbs"]["o"]["jobs"]["read"]["steps"].append("add_ssh_keys"), "add_ssh_keys"),
        (
            lambda d: d["orbs"]["o"]["jobs"]["read"]["steps"].append(
                {"run": {"command": "x", "background": True}}
            ),
            "background",
        ),
        (lambda d: d["orbs"]["o"]["jobs"]["read"].update(parallelism=4), "parallelism"),
        (
            lambda d: d["workflows"]["w"]["jobs"][0]["o/write"].update({"pre-steps": []}),
            "'pre-steps'",
        ),
    ],
)
def test_unsupported_features_are_refused_by_name(tmp_path, edit, message):
    from tfship.ci.workflow import load_config

    doc = yaml.safe_load(yaml.safe_dump(CONFIG))
    edit(doc)
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(Unsupported, match=message):
        plan(load_config(path), "w", {"flag": True}, "main")


def test_serial_group_is_accepted_and_said_to_hold_nothing_locally(tmp_path):
    doc = yaml.safe_load(yaml.safe_dump(CONFIG))
    doc["workflows"]["w"]["jobs"][0]["o/write"]["serial-group"] = "<< pipeline.git.branch >>/x"
    results, log, _ = run(tmp_path, decide=lambda n: "approve", doc=doc)
    assert results["a"].status == "success"
    assert "[a] serial-group main/x: locally one pipeline runs at a time" in log
    doc["workflows"]["w"]["jobs"][0]["o/write"]["serial-group"] = ""
    with pytest.raises(ConfigError, match="serial-group must be a non-empty string"):
        plan(doc, "w", {"flag": True}, "main")


def test_logic_statements_and_filters():
    assert truth({"and": [True, {"not": False}, {"equal": ["a", "a"]}]})
    assert truth({"or": [False, {"matches": {"pattern": "^v.*", "value": "v1"}}]})
    assert not truth("false") and truth("true")
    assert branch_allowed({"branches": {"only": ["main", "/rel-.*/"]}}, "rel-2")
    assert not branch_allowed({"branches": {"ignore": "main"}}, "main")
    assert substitute("a \\<< parameters.x >>", {"x": 1}, {}, "t") == "a \\<< parameters.x >>"


# --------------------------------------------------------------------------------------------
# Setup workflows and continuations (dynamic configuration), end to end through the CLI
# --------------------------------------------------------------------------------------------

# The setup job continues (or not) with tfship's own client, as the orb's plan job does.
CONTINUE = (
    'python3 -c "import os, json; from tfship.ci.api import CircleCI; '
    "c = CircleCI.for_continuation(os.environ['CIRCLECI_API_URL']); "
    "print(c.continue_pipeline(os.environ['CIRCLE_CONTINUATION_KEY'], "
    "open(os.environ['CONFIG']).read(), json.loads(os.environ['SEND']))['message'])\""
)
SETUP = f"""
version: 2.1
setup: true
parameters:
  send: {{type: string, default: '{{"retrain": true, "data_uri": "s3://b/snap-7/"}}'}}
  mode: {{type: enum, enum: [continue, finish, stop, fail], default: continue}}
jobs:
  plan:
    docker: [{{image: x}}]
    steps:
      - checkout
      - run: {{name: look, command: "echo looked at the data"}}
      - when:
          condition: {{equal: [fail, << pipeline.parameters.mode >>]}}
          steps: [{{run: {{name: broken, command: "exit 4"}}}}]
      - when:
          condition: {{equal: [continue, << pipeline.parameters.mode >>]}}
          steps:
            - run:
                name: continue
                environment: {{SEND: << pipeline.parameters.send >>, CONFIG: continue.yml}}
                command: {json.dumps(CONTINUE)}
      - when:
          condition: {{equal: [finish, << pipeline.parameters.mode >>]}}
          steps:
            - run:
                name: finish
                environment: {{SEND: "{{}}", CONFIG: finish.yml}}
                command: {json.dumps(CONTINUE)}
workflows:
  setup:
    jobs: [plan]
"""
CONTINUED = """
version: 2.1
parameters:
  retrain: {type: boolean, default: false}
  data_uri: {type: string, default: ""}
  # The setup config's, which a trigger's --param carries over (CircleCI requires them here).
  send: {type: string, default: ""}
  mode: {type: string, default: ""}
jobs:
  say:
    docker: [{image: x}]
    parameters:
      text: {type: string}
    steps:
      - run: {name: say, command: "echo said << parameters.text >>"}
workflows:
  build-deploy:
    unless: << pipeline.parameters.retrain >>
    jobs:
      - say: {name: build, text: build}
  retrain-deploy:
    when: << pipeline.parameters.retrain >>
    jobs:
      - say: {name: retrain, text: "<< pipeline.parameters.data_uri >>"}
      - say: {name: deploy, text: deployed, requires: [retrain], serial-group: deploys}
"""


def local_setup(tmp_path, *params: str, workflow: str | None = None):
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "config.yml").write_text(SETUP)
    (project / "continue.yml").write_text(CONTINUED)
    # What the continuation orb's `finish` (and `tfship ci plan` on unchanged data) sends.
    (project / "finish.yml").write_text("{version: 2, jobs: {}, workflows: {version: 2}}")
    args = [f"--param={p}" for p in params] + ([workflow] if workflow else [])
    p = subprocess.run(
        [sys.executable, "-m", "tfship", "ci", "local", "--config", "config.yml"]
        + ["--branch", "main", "--out", str(tmp_path / "out"), "--json", *args],
        cwd=project,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    doc = json.loads(p.stdout) if p.stdout.startswith("{") else {}
    return p, doc


def test_a_setup_workflow_continues_with_the_workflows_its_parameters_select(tmp_path):
    p, doc = local_setup(tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert doc["setup"] is True and doc["workflow"] == "setup"
    assert doc["jobs"]["plan"]["status"] == "success"
    cont = doc["continued"]
    assert cont["parameters"] == {"retrain": True, "data_uri": "s3://b/snap-7/"}
    assert [w["workflow"] for w in cont["workflows"]] == ["retrain-deploy"]
    assert cont["not_run"] == ["build-deploy"]
    jobs = cont["workflows"][0]["jobs"]
    assert {k: v["status"] for k, v in jobs.items()} == {"retrain": "success", "deploy": "success"}
    assert "[plan]   Pipeline continued." in p.stderr  # CircleCI's 200 {message}
    assert "[retrain]   said s3://b/snap-7/" in p.stderr
    assert "[deploy] serial-group deploys: locally one pipeline runs at a time" in p.stderr
    assert (tmp_path / "out" / "continued" / "retrain-deploy" / "jobs" / "retrain").is_dir()

    p, doc = local_setup(tmp_path, 'send={"retrain": false}')
    assert p.returncode == 0, p.stderr[-3000:]
    assert [w["workflow"] for w in doc["continued"]["workflows"]] == ["build-deploy"]
    assert "[build]   said build" in p.stderr


def test_a_setup_workflow_that_does_not_continue_ends_green_with_its_output(tmp_path):
    from tfship.ci.local import LocalRun, Result

    p, doc = local_setup(tmp_path, "mode=stop")
    assert p.returncode == 0, p.stderr[-3000:]
    assert doc["continued"] is None and doc["jobs"]["plan"]["status"] == "success"
    assert "[plan]   looked at the data" in p.stderr
    assert not (tmp_path / "out" / "continued").exists()
    text = LocalRun("setup", {"plan": Result("plan", "success", 1.0)}, tmp_path, True).summary()
    assert text.splitlines()[0] == "workflow setup (setup)"
    assert text.splitlines()[-1] == "not continued: the setup workflow ended the pipeline"


def test_a_continued_workflow_named_against_the_setup_config_is_pointed_at_config(tmp_path):
    p, _ = local_setup(tmp_path, workflow="retrain-deploy")
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "config.yml is a setup config; its workflows are setup" in p.stderr
    assert "retrain-deploy of the continuation config with --config" in p.stderr


def test_a_setup_workflow_that_finishes_runs_nothing_more_and_ends_green(tmp_path):
    p, doc = local_setup(tmp_path, "mode=finish")
    assert p.returncode == 0, p.stderr[-3000:]
    assert doc["continued"] == {
        "parameters": {"mode": "finish"},  # the trigger's, carried over
        "workflows": [],
        "not_run": [],
        "finished": True,
    }
    assert "[plan] $ finish\n[plan]   Pipeline continued." in p.stderr
    assert not (tmp_path / "out" / "continued").exists()


def test_a_failed_setup_job_fails_the_run_and_continues_nothing(tmp_path):
    p, doc = local_setup(tmp_path, "mode=fail")
    assert p.returncode == 11, p.stderr[-3000:]
    assert doc["continued"] is None and doc["jobs"]["plan"]["failed_step"] == "broken"
    assert "job(s) failed: setup/plan" in p.stderr.splitlines()[-1]


def test_a_continuation_with_an_undeclared_parameter_is_refused_and_the_job_fails(tmp_path):
    p, doc = local_setup(tmp_path, 'send={"retrain": true, "nightly": true}')
    assert p.returncode == 11, p.stderr[-3000:]
    assert "HTTP 400: config compilation failed: Unexpected argument(s): nightly" in p.stderr
    assert doc["continued"] is None


def test_the_local_continue_endpoint_takes_one_valid_key_once():
    import requests
    from tfship.ci.api import CircleCI
    from tfship.ci.continuation import Loopback
    from tfship.errors import ApiError

    with Loopback("main") as loop:
        api = CircleCI.for_continuation(loop.url, timeout=5)
        with pytest.raises(ApiError, match="HTTP 401: Invalid continuation key"):
            api.continue_pipeline("not-the-key", CONTINUED, {})
        with pytest.raises(ApiError, match="HTTP 400: config compilation failed: .*retrain"):
            api.continue_pipeline(loop.key, CONTINUED, {"retrain": "maybe"})
        with pytest.raises(ApiError, match="cannot itself be a setup configuration"):
            api.continue_pipeline(loop.key, SETUP, {})
        r = requests.post(
            f"{loop.url}/pipeline/continue",
            json={"continuation-key": loop.key, "configuration": CONTINUED, "extra": 1},
            timeout=5,
        )
        assert r.status_code == 400 and "'extra' is not a field" in r.json()["message"]
        r = requests.post(
            f"{loop.url}/pipeline/continue",
            json={
                "continuation-key": loop.key,
                "configuration": CONTINUED,
                "parameters": {"ratio": 1.5, "data_uri": "x" * 513},
            },
            timeout=5,
        )
        assert r.status_code == 400 and r.json()["message"] == (
            "parameter 'ratio' must be an integer, a string or a boolean; "
            "parameter 'data_uri' is over 512 characters"
        )
        assert loop.continuation is None  # refusals do not use the key up
        assert api.continue_pipeline(loop.key, CONTINUED, {"retrain": True}) == {
            "message": "Pipeline continued."
        }
        with pytest.raises(ApiError, match="HTTP 409: Continuation key has already been used"):
            api.continue_pipeline(loop.key, CONTINUED, {})
        assert loop.continuation.parameters == {"retrain": True}

    # A trigger's parameters carry into the continuation, which may not send them again.
    with Loopback("main", triggered={"data_uri": "s3://b/new/"}) as loop:
        api = CircleCI.for_continuation(loop.url, timeout=5)
        with pytest.raises(ApiError, match="HTTP 400: Conflicting pipeline parameters"):
            api.continue_pipeline(loop.key, CONTINUED, {"data_uri": "s3://b/other/"})
        api.continue_pipeline(loop.key, CONTINUED, {"retrain": True})
        assert loop.continuation.parameters == {"data_uri": "s3://b/new/", "retrain": True}


# --- orbs by registry reference, run from their source folder (--orb) ----------------------

ORB_SOURCE = {
    "@orb.yml": "version: 2.1\ndescription: A test orb.\n",
    "commands/greet.yml": """
parameters:
  who: {type: string, default: world}
steps:
  - run:
      name: Greet
      environment: {PARAM_WHO: << parameters.who >>}
      command: <<include(scripts/greet.sh)>>
""",
    "scripts/greet.sh": 'echo "hello ${PARAM_WHO} from the source (<< not substituted >>)"\n',
    "jobs/hello.yml": """
parameters:
  who: {type: string, default: world}
executor: small
steps:
  - greet: {who: << parameters.who >>}
""",
    "executors/small.yml": "docker: [{image: cimg/base:current}]\n",
}

USES_ORB = """
version: 2.1
orbs:
  acme: acme/greeter@1.2.3
workflows:
  w:
    jobs:
      - acme/hello: {name: hi, who: team}
"""


def orb_project(tmp_path):
    project = tmp_path / "project"
    for rel, text in ORB_SOURCE.items():
        path = project / "orb" / "src" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (project / "config.yml").write_text(USES_ORB)
    return project


def local_orb(project, tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "tfship", "ci", "local", "w", "--config", "config.yml"]
        + ["--branch", "main", "--out", str(tmp_path / "out"), "--json", *args],
        cwd=project,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_registry_orb_runs_from_its_source_folder_packed_as_pack_orb_packs_it(tmp_path):
    project = orb_project(tmp_path)
    p = local_orb(project, tmp_path, "--orb", "acme/greeter=orb/src")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["jobs"]["hi"]["status"] == "success"
    # The script was included, its << escaped (left as text), the job's parameter passed on.
    assert "[hi]   hello team from the source (<< not substituted >>)" in p.stderr

    from tfship.ci.orbpack import pack_source
    from tfship.ci.workflow import parse_orb_sources

    orbs = {"acme/greeter": pack_source(project / "orb" / "src")}
    (job,), _ = plan(yaml.safe_load(USES_ORB), "w", {}, "main", orbs=orbs)
    assert job.steps[0]["run"]["environment"] == {"PARAM_WHO": "team"}
    assert parse_orb_sources(("acme/greeter=orb/src",)) == {"acme/greeter": Path("orb/src")}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            (),
            "orb 'acme' is a registry reference (acme/greeter@1.2.3); locally it runs from "
            "its source: --orb acme/greeter=FOLDER (e.g. orb/src)",
        ),
        (("--orb", "acme/other=orb/src"), "--orb acme/greeter=FOLDER"),
        (("--orb", "greeter=orb/src"), "--orb 'greeter=orb/src': expected NAMESPACE/ORB=FOLDER"),
        (("--orb", "acme/greeter=nowhere"), "--orb acme/greeter=nowhere: no such folder"),
        (("--orb", "acme/greeter=orb"), "@orb.yml not found"),
    ],
)
def test_a_registry_orb_without_a_usable_source_is_refused_in_one_line(tmp_path, args, message):
    project = orb_project(tmp_path)
    p = local_orb(project, tmp_path, *args)
    assert p.returncode == 2, p.stderr[-3000:]
    assert p.stderr.count("\n") == 1 and message in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_a_continuation_that_uses_an_orb_by_reference_is_compiled_with_it(tmp_path):
    """CircleCI compiles a continuation with the orbs it references: an orb job given a
    parameter it does not declare is refused (400), a good one accepted. Locally the orb
    comes from ``--orb``'s folder; without it the config cannot be checked, not passed."""
    from tfship.ci.api import CircleCI
    from tfship.ci.continuation import Loopback
    from tfship.ci.orbpack import pack_source
    from tfship.errors import ApiError

    orbs = {"acme/greeter": pack_source(orb_project(tmp_path) / "orb" / "src")}
    wrong = USES_ORB.replace("who: team", "whom: team")
    with Loopback("main", orbs=orbs) as loop:
        api = CircleCI.for_continuation(loop.url, timeout=5)
        with pytest.raises(ApiError, match="HTTP 400: config compilation failed: .*whom"):
            api.continue_pipeline(loop.key, wrong, {})
        api.continue_pipeline(loop.key, USES_ORB, {})
        assert loop.continuation.configuration == USES_ORB
