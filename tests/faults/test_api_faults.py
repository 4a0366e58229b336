"""CircleCI API faults: 5xx, timeouts, and a trigger whose answer is lost (never triggered twice).

Against the OpenAPI-checked stand-in; retries are bounded and their waits made short with
TFSHIP_API_MAX_BACKOFF / TFSHIP_API_TIMEOUT, the settings a user has too. A lost trigger is
found from what CircleCI's answers define (the user's pipelines, their numbers, branch and
trigger type), never from the parameters, which no answer carries: what a pipeline was
triggered with is read from the stand-in's own record, ``state.pipeline_params``.
"""

from __future__ import annotations

import json

import pytest
from circleci_standin import GOOD_TOKEN
from helpers import clean_env, run_cli

pytestmark = pytest.mark.timeout(120)
SLUG = "gh/acme/models"


def ci(api, *args, timeout="5"):
    env = clean_env(
        CIRCLE_TOKEN=GOOD_TOKEN,
        CIRCLE_PROJECT_SLUG=SLUG,
        CIRCLECI_API_URL=api.url,
        TFSHIP_API_TIMEOUT=timeout,
        TFSHIP_API_MAX_BACKOFF="0.05",
    )
    return run_cli("ci", *args, cwd=".", env=env, timeout=90)


def triggers(api) -> int:
    return sum(1 for r in api.state.requests if r["operation"] == "triggerPipeline")


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_few_5xx_are_retried_and_one_pipeline_is_made(api, status):
    api.state.faults_for = "triggerPipeline"
    api.state.errors, api.state.error_status = 2, status
    r = ci(api, "trigger", "--param", "retrain=true", "--json")
    assert r.code == 0, r.err
    assert r.err.count(f"HTTP {status}, retrying") == 2
    # Each 5xx came before any work: looked up, not found, so sent again.
    assert triggers(api) == 3 and len(api.state.pipelines) == 1
    assert json.loads(r.out)["pipeline"]["id"] in api.state.pipelines


def test_a_5xx_storm_gives_up_after_bounded_tries_with_one_line(api):
    api.state.errors, api.state.error_status = 1000, 502
    r = ci(api, "status", "00000000-0000-0000-0000-000000000000")
    assert r.code == 7
    assert "HTTP 502 after 6 tries" in r.err_lines[-1] and "status.circleci.com" in r.err_lines[-1]
    assert len(api.state.requests) == 6  # 1 + 5 retries
    assert "Traceback" not in r.err


def test_a_slow_answer_times_out_and_is_retried(api):
    pid = json.loads(ci(api, "trigger", "--json").out)["pipeline"]["id"]
    api.state.slow, api.state.slow_seconds = 1, 3.0
    r = ci(api, "status", pid, "--json", timeout="0.5")
    assert r.code == 0, r.err
    assert "ReadTimeout, retrying" in r.err


def test_an_api_that_never_answers_in_time_is_a_bounded_failure(api):
    api.state.slow, api.state.slow_seconds = 1000, 1.0
    r = ci(api, "status", "00000000-0000-0000-0000-000000000000", timeout="0.2")
    assert r.code == 7
    line = r.err_lines[-1]
    assert (
        "CircleCI unreachable after 6 tries (ReadTimeout)" in line and "TFSHIP_API_TIMEOUT" in line
    )


def lose_the_next_trigger_answer(api, lost: str) -> str:
    """Make the next trigger do its work and lose its answer; the client timeout to use."""
    api.state.faults_for = "triggerPipeline"
    if lost == "timeout":
        api.state.slow, api.state.slow_seconds = 1, 2.0
        return "0.5"
    api.state.bad_gateway_after_work = 1
    return "5"


@pytest.mark.parametrize("lost", ["timeout", "502 after the work"])
def test_a_trigger_whose_answer_is_lost_is_found_not_sent_again(api, lost):
    ci(api, "trigger", "--param", "retrain=false")  # your pipeline on the branch, but older
    before = triggers(api)
    timeout = lose_the_next_trigger_answer(api, lost)
    r = ci(api, "trigger", "--param", "retrain=true", "--json", timeout=timeout)
    assert r.code == 0, r.err
    assert triggers(api) - before == 1  # sent once
    assert len(api.state.pipelines) == 2
    made = json.loads(r.out)["pipeline"]["id"]
    assert api.state.pipeline_params[made] == {"retrain": True}
    assert "the lost call had succeeded; not repeating it" in r.err


@pytest.mark.parametrize(
    "other",
    [
        {"login": "someone-else"},  # not in your pipelines (listMyPipelines)
        {"branch": "dev"},  # yours, on another branch (checked by the client)
        {"tag": "v1.0.0"},  # yours, on a tag
    ],
    ids=["someone else's", "yours on another branch", "yours on a tag"],
)
def test_another_trigger_at_that_moment_is_not_taken_for_the_lost_one(api, other):
    api.state.concurrent_triggers = [other]
    timeout = lose_the_next_trigger_answer(api, "502 after the work")
    r = ci(api, "trigger", "--param", "retrain=true", "--json", timeout=timeout)
    assert r.code == 0, r.err
    assert triggers(api) == 1 and len(api.state.pipelines) == 2
    made = api.state.pipelines[json.loads(r.out)["pipeline"]["id"]]
    assert made["trigger"]["actor"]["login"] == "me" and made["vcs"].get("branch") == "main"


def test_two_pipelines_that_could_be_the_lost_trigger_stop_it_without_guessing(api):
    api.state.concurrent_triggers = [{}]  # another of your processes, same branch, same moment
    r = ci(
        api,
        "trigger",
        "--param",
        "retrain=true",
        timeout=lose_the_next_trigger_answer(api, "502 after the work"),
    )
    assert r.code == 7
    line = r.err_lines[-1]
    assert "cannot tell which pipeline the trigger on branch main made" in line
    assert all(f"{p['number']} ({p['id']})" in line for p in api.state.pipelines.values())
    assert "not triggering again" in line
    assert triggers(api) == 1 and len(api.state.pipelines) == 2
