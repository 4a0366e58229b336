"""CircleCI API faults: 5xx, timeouts, and a trigger whose answer is lost (never triggered twice).

Against the OpenAPI-checked stand-in; retries are bounded and their waits made short with
TFSHIP_API_MAX_BACKOFF / TFSHIP_API_TIMEOUT, the settings a user has too.
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
    return sum(1 for r in api.state.requests if r["method"] == "POST")


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_few_5xx_are_retried_and_one_pipeline_is_made(api, status):
    api.state.errors, api.state.error_status = 2, status
    r = ci(api, "trigger", "--param", "retrain=true", "--json")
    assert r.code == 0, r.err
    assert r.err.count(f"HTTP {status}, retrying") == 2
    assert len(api.state.pipelines) == 1
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


@pytest.mark.parametrize("lost", ["timeout", "502 after the work"])
def test_a_trigger_whose_answer_is_lost_is_found_not_sent_again(api, lost):
    ci(api, "trigger", "--param", "retrain=false")  # another pipeline on the branch: not it
    before = triggers(api)
    if lost == "timeout":
        api.state.slow, api.state.slow_seconds = 1, 2.0
        r = ci(api, "trigger", "--param", "retrain=true", "--json", timeout="0.5")
    else:
        api.state.bad_gateway_after_work = 1
        r = ci(api, "trigger", "--param", "retrain=true", "--json")
    assert r.code == 0, r.err
    assert triggers(api) - before == 1  # sent once
    assert len(api.state.pipelines) == 2
    made = json.loads(r.out)["pipeline"]["id"]
    assert api.state.pipelines[made]["trigger_parameters"]["parameters"] == {"retrain": True}
    assert "the lost call had succeeded; not repeating it" in r.err
