"""The local CircleCI runner's semantics, on small configs with shell steps."""

from __future__ import annotations

import pytest
import yaml
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
        (lambda d: d.update(setup=True), "top-level key 'setup'"),
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


def test_logic_statements_and_filters():
    assert truth({"and": [True, {"not": False}, {"equal": ["a", "a"]}]})
    assert truth({"or": [False, {"matches": {"pattern": "^v.*", "value": "v1"}}]})
    assert not truth("false") and truth("true")
    assert branch_allowed({"branches": {"only": ["main", "/rel-.*/"]}}, "rel-2")
    assert not branch_allowed({"branches": {"ignore": "main"}}, "main")
    assert substitute("a \\<< parameters.x >>", {"x": 1}, {}, "t") == "a \\<< parameters.x >>"
