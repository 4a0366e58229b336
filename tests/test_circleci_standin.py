"""The CircleCI stand-in itself, without HTTP: what it builds is what the spec allows, and its
validator rejects what the spec does not (so it cannot quietly turn permissive)."""

from __future__ import annotations

import copy

import pytest
from circleci_standin import (
    BY_ID,
    HANDLERS,
    ME,
    Call,
    State,
    creation_answer,
    match,
    request_problems,
    response_problems,
)

SLUG = "gh/acme/models"
SCHEDULE = {
    "name": "nightly-retrain",
    "description": "tfship: nightly-retrain",
    "attribution-actor": "system",
    "timetable": {"per-hour": 1, "hours-of-day": [2], "days-of-week": ["MON"]},
    "parameters": {"branch": "main", "retrain": True},
}


def listing(items: list) -> dict:
    return {"items": items, "next_page_token": None}


@pytest.fixture
def state() -> State:
    """A stand-in state with a branch, a tag, a retrain and an errored pipeline in it."""
    st = State()
    st.create_pipeline(SLUG, branch="main")
    st.create_pipeline(SLUG, tag="v1.0.0")
    st.create_pipeline(
        SLUG,
        branch="main",
        parameters={"retrain": True, "data_uri": "https://d.example/snap-7.npz"},
    )
    st.create_pipeline(SLUG, branch="main", parameters={"undeclared": 1})
    st.create_schedule(SLUG, SCHEDULE)
    return st


def test_every_pipeline_it_builds_validates_strictly(state):
    pipelines = list(state.pipelines.values())
    assert {p["state"] for p in pipelines} == {"created", "errored"}
    for p in pipelines:
        assert response_problems("getPipelineById", 200, p) == []
        assert response_problems("triggerPipeline", 201, creation_answer(p)) == []
        assert response_problems("triggerPipelineRun", 201, creation_answer(p)) == []
    for op in ("listPipelinesForProject", "listMyPipelines"):
        assert response_problems(op, 200, listing(pipelines)) == []


def test_a_tag_trigger_pipeline_validates_and_is_on_the_tag(state):
    tagged = next(p for p in state.pipelines.values() if "tag" in p["vcs"])
    assert tagged["vcs"]["tag"] == "v1.0.0" and "branch" not in tagged["vcs"]
    assert response_problems("getPipelineById", 200, tagged) == []


def test_every_workflow_job_and_schedule_it_builds_validates_strictly(state):
    workflows = list(state.workflows.values())
    assert {w["name"] for w in workflows} == {"build-deploy", "retrain-deploy"}
    for w in workflows:
        assert response_problems("getWorkflowById", 200, w) == []
        assert response_problems("listWorkflowJobs", 200, listing(state.jobs[w["id"]])) == []
    assert response_problems("listWorkflowsByPipelineId", 200, listing(workflows)) == []
    [schedule] = state.schedules.values()
    assert response_problems("createSchedule", 201, schedule) == []
    assert response_problems("listSchedulesForProject", 200, listing([schedule])) == []


def test_what_approve_and_cancel_leave_validates_strictly(state):
    held = next(w for w in state.workflows.values() if w["status"] == "on_hold")
    hold = next(j for j in state.jobs[held["id"]] if j["type"] == "approval")
    assert HANDLERS["cancelWorkflow"](Call(state, {"id": held["id"]}, {}, None))[0] == 202
    for _ in range(state.cancel_delay_requests + 1):
        state.settle()
    assert held["status"] == "canceled" and hold["status"] == "canceled"
    assert held["canceled_by"] == ME["id"] and held["stopped_at"]
    assert response_problems("getWorkflowById", 200, held) == []
    assert response_problems("listWorkflowJobs", 200, listing(state.jobs[held["id"]])) == []
    # A finished workflow cannot be canceled again (assumed 400, an error from default).
    status, body = HANDLERS["cancelWorkflow"](Call(state, {"id": held["id"]}, {}, None))
    assert status == 400 and response_problems("cancelWorkflow", status, body) == []


def test_parameters_are_kept_beside_the_pipeline_never_in_it(state):
    p = next(p for p in state.pipelines.values() if state.pipeline_params[p["id"]])
    assert state.pipeline_params[p["id"]] == {
        "retrain": True,
        "data_uri": "https://d.example/snap-7.npz",
    }
    assert "snap-7" not in repr(p) and "trigger_parameters" not in p


def test_lists_are_filtered_as_the_spec_says(state):
    other = state.create_pipeline("gh/acme/other", branch="main")
    state.create_schedule("gh/acme/other", SCHEDULE)
    state.page_size = 100

    def items(operation_id: str, query: dict) -> list[dict]:
        status, body = HANDLERS[operation_id](Call(state, {"project_slug": SLUG}, query, None))
        assert status == 200 and response_problems(operation_id, status, body) == []
        return body["items"]

    on_main = items("listPipelinesForProject", {"branch": "main"})
    assert len(on_main) == 3 and all(p["vcs"]["branch"] == "main" for p in on_main)
    assert other["id"] not in {p["id"] for p in items("listPipelinesForProject", {})}
    assert [s["project-slug"] for s in items("listSchedulesForProject", {})] == [SLUG]
    state.create_pipeline(SLUG, branch="main", login="someone-else")
    assert len(items("listPipelinesForProject", {})) == 5
    assert len(items("listMyPipelines", {})) == 4


def test_cancelling_an_unknown_job_is_not_found(state):
    unknown = {"job_id": "5034460f-c7c4-4c43-9457-de07e2029e7b"}
    status, body = HANDLERS["cancelJobByJobID"](Call(state, unknown, {}, None))
    assert status == 404 and response_problems("cancelJobByJobID", status, body) == []
    assert state.canceled_jobs == []


# --- the validator rejects what the spec does not define -------------------------------------


def test_a_pipeline_carrying_trigger_parameters_is_rejected(state):
    p = copy.deepcopy(next(iter(state.pipelines.values())))
    p["trigger_parameters"] = {"parameters": {"retrain": True}}
    problems = response_problems("getPipelineById", 200, p)
    assert any("$.trigger_parameters.parameters" in m for m in problems)  # strict schema
    assert any("$.trigger_parameters: " in m and "must not send" in m for m in problems)
    # Even a value the open map's schema allows is refused: its keys are undefined.
    p["trigger_parameters"] = {"data_uri": "x"}
    assert response_problems("listMyPipelines", 200, listing([p])) == [
        "listMyPipelines answer 200 $.items[0].trigger_parameters: Pipeline.trigger_parameters"
        " is an open map with no defined keys; the stand-in must not send it"
    ]


def test_a_job_whose_started_at_is_null_is_rejected(state):
    job = copy.deepcopy(next(iter(state.jobs.values()))[0])
    job["started_at"] = None
    [problem] = response_problems("listWorkflowJobs", 200, listing([job]))
    assert "$.items[0].started_at: None is not of type 'string'" in problem


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"invented": 1}, "$: Unevaluated properties are not allowed ('invented'"),
        ({"id": "not-a-uuid"}, "$.id: 'not-a-uuid' is not a 'uuid'"),
        ({"created_at": "yesterday"}, "$.created_at: 'yesterday' is not a 'date-time'"),
        ({"state": "running"}, "$.state: 'running' is not one of"),
    ],
)
def test_fields_formats_and_enums_the_spec_does_not_allow_are_rejected(state, change, where):
    p = {**next(iter(state.pipelines.values())), **change}
    assert any(where in m for m in response_problems("getPipelineById", 200, p))


def test_nullable_fields_take_null_and_others_do_not(state):
    w = {**next(iter(state.workflows.values())), "tag": None}  # x-nullable enum [setup]
    assert response_problems("getWorkflowById", 200, w) == []
    p = copy.deepcopy(next(iter(state.pipelines.values())))
    p["vcs"]["branch"] = None  # not nullable: a tag pipeline leaves it out instead
    assert response_problems("getPipelineById", 200, p) != []


def test_statuses_must_be_declared_and_errors_must_say_why():
    assert response_problems("triggerPipelineRun", 409, {"message": "x"}) == [
        "triggerPipelineRun answer 409: status not declared "
        "(triggerPipelineRun declares no 409 and no default)"
    ]
    assert response_problems("triggerPipeline", 200, {"message": "x"}) != []  # 201 only
    assert response_problems("triggerPipelineRun", 503, {"message": "down"}) == []
    assert response_problems("getPipelineById", 503, {}) != []  # {message} is required
    assert response_problems("getPipelineById", 502, {"message": "x", "extra": 1}) != []


# --- requests ----------------------------------------------------------------------------------


def problems(method: str, path: str, query=None, body=None) -> list[str]:
    op, args = match(method, path)
    return request_problems(op, args, query or {}, body, body is not None)


def test_routes_prefer_literal_segments():
    assert match("GET", "/project/gh/acme/models/pipeline/mine")[0].operation_id == (
        "listMyPipelines"
    )
    assert match("GET", "/project/gh/acme/models/pipeline/7")[0].operation_id == (
        "getPipelineByNumber"
    )
    assert match("GET", "/project/gh%2Facme%2Fmodels/pipeline") is None  # three segments


def test_query_parameters_are_the_declared_ones_plus_the_page_token_gap():
    wf = "5034460f-c7c4-4c43-9457-de07e2029e7b"
    assert problems("GET", f"/workflow/{wf}/job", {"page-token": ["2"]}) == []
    assert problems("GET", f"/workflow/{wf}/job", {"bogus": ["1"]}) == [
        "query 'bogus' is not a parameter of listWorkflowJobs"
    ]
    assert problems("GET", f"/project/{SLUG}/pipeline/mine", {"branch": ["main"]}) == [
        "query 'branch' is not a parameter of listMyPipelines"
    ]
    assert problems("GET", f"/project/{SLUG}/pipeline", {"branch": ["main"]}) == []


def test_path_parameters_are_checked_by_their_schema():
    assert any("is not a 'uuid'" in m for m in problems("POST", "/jobs/not-a-uuid/cancel"))
    [bad] = problems("POST", "/project/gitlab/acme/models/pipeline/run", body={})
    assert bad.startswith("path provider='gitlab'")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"branch": "main", "tag": "v1"}, "body: branch and tag are mutually exclusive"),
        ({"parameters": {f"p{i}": 1 for i in range(101)}}, "body: 101 parameters; at most 100"),
        ({"parameters": {"k" * 129: 1}}, "characters (> 128)"),
        ({"parameters": {"data_uri": "x" * 513}}, "'data_uri' is 513 characters (> 512)"),
        ({"branch": "main", "unknown": 1}, "Unevaluated properties are not allowed"),
    ],
)
def test_trigger_bodies_follow_the_spec_and_its_prose(body, expected):
    assert any(expected in m for m in problems("POST", f"/project/{SLUG}/pipeline", body=body))
    assert problems("POST", f"/project/{SLUG}/pipeline", body={"branch": "main"}) == []


def test_schedule_bodies_are_required_and_follow_the_prose():
    assert problems("POST", f"/project/{SLUG}/schedule") == ["createSchedule needs a body"]
    assert problems("POST", f"/project/{SLUG}/schedule", body=SCHEDULE) == []
    no_ref = {**SCHEDULE, "parameters": {"retrain": True}}
    assert problems("POST", f"/project/{SLUG}/schedule", body=no_ref) == [
        "body: parameters must contain branch or tag"
    ]
    both = {**SCHEDULE, "timetable": {**SCHEDULE["timetable"], "days-of-month": [1]}}
    assert problems("POST", f"/project/{SLUG}/schedule", body=both) == [
        "body: days-of-week and days-of-month are mutually exclusive"
    ]


def test_a_body_on_an_operation_without_one_is_refused():
    wf = "5034460f-c7c4-4c43-9457-de07e2029e7b"
    assert problems("POST", f"/workflow/{wf}/cancel", body={}) == ["cancelWorkflow takes no body"]


def test_every_handler_is_a_spec_operation():
    assert set(HANDLERS) <= set(BY_ID)
    assert {"cancelWorkflow", "getWorkflowById", "listMyPipelines"} <= set(HANDLERS)


CONTINUED = """
version: 2.1
parameters:
  retrain: {type: boolean, default: false}
  data_uri: {type: string, default: ""}
workflows:
  retrain-deploy:
    when: << pipeline.parameters.retrain >>
    jobs: [x]
"""


def test_continue_bodies_follow_the_spec_and_its_prose():
    ok = {"continuation-key": "k", "configuration": CONTINUED, "parameters": {"retrain": True}}
    assert problems("POST", "/pipeline/continue", body=ok) == []
    assert problems("POST", "/pipeline/continue") == ["continuePipeline needs a body"]
    no_config = {"continuation-key": "k"}
    assert any(
        "'configuration' is a required" in m
        for m in problems("POST", "/pipeline/continue", body=no_config)
    )
    nested = {**ok, "parameters": {"x": {"a": 1}}}
    assert problems("POST", "/pipeline/continue", body=nested)
    extra = {**ok, "config": "x"}
    assert any(
        "Unevaluated properties" in m for m in problems("POST", "/pipeline/continue", body=extra)
    )
    long = {**ok, "parameters": {"data_uri": "x" * 513}}
    assert problems("POST", "/pipeline/continue", body=long) == [
        "body: parameter 'data_uri' is 513 characters (> 512)"
    ]


def _continue(state: State, key: str, configuration: str = CONTINUED, **params):
    body = {"continuation-key": key, "configuration": configuration, "parameters": params}
    status, out = HANDLERS["continuePipeline"](Call(state, {}, {}, body))
    assert response_problems("continuePipeline", status, out) == []
    return status, out["message"]


def test_a_continuation_key_works_once_and_a_bad_config_does_not_use_it(state):
    pid = next(iter(state.pipelines))
    key = state.continuation_key(pid)
    assert _continue(state, "not-a-key") == (401, "Invalid continuation key.")
    assert _continue(state, key, retrain="yes") == (
        400,
        "config compilation failed: parameter retrain: 'yes' is not a boolean",
    )
    assert _continue(state, key, nightly=True)[1].endswith("Unexpected argument(s): nightly")
    assert _continue(state, key, "version: 2.1\nsetup: true\n")[0] == 400
    assert _continue(state, key, "a: [")[0] == 400
    assert pid not in state.continued
    assert _continue(state, key, retrain=True, data_uri="s3://b/p/") == (
        200,
        "Pipeline continued.",
    )
    assert state.continued[pid]["parameters"] == {"retrain": True, "data_uri": "s3://b/p/"}
    assert _continue(state, key) == (409, "Continuation key has already been used.")
    late = state.continuation_key(pid)
    state.continuation_keys[late]["state"] = "expired"
    assert _continue(state, late)[0] == 409


def test_the_trigger_parameters_carry_over_and_may_not_be_sent_again(state):
    p = state.create_pipeline(SLUG, parameters={"retrain": True, "data_uri": "s3://b/new/"})
    key = state.continuation_key(p["id"])
    assert _continue(state, key, retrain=True) == (400, "Conflicting pipeline parameters.")
    undeclaring = CONTINUED.replace('  data_uri: {type: string, default: ""}\n', "")
    assert _continue(state, key, undeclaring)[1].endswith("Unexpected argument(s): data_uri")
    assert _continue(state, key) == (200, "Pipeline continued.")
    assert state.continued[p["id"]]["parameters"] == {}


def test_the_client_continues_without_a_token_and_says_why_it_could_not(api):
    from tfship.ci.api import CircleCI
    from tfship.errors import ApiError

    pid = api.state.create_pipeline(SLUG)["id"]
    key = api.state.continuation_key(pid)
    client = CircleCI.for_continuation(api.url, timeout=5)
    assert client.continue_pipeline(key, CONTINUED, {"retrain": True}) == {
        "message": "Pipeline continued."
    }
    assert api.state.requests[-1]["token"] is None  # the key was the credential
    with pytest.raises(ApiError, match="HTTP 409: Continuation key has already been used") as e:
        client.continue_pipeline(key, CONTINUED, {"retrain": True})
    assert "works once" in str(e.value)
    with pytest.raises(ApiError, match="Unexpected argument"):
        client.continue_pipeline(api.state.continuation_key(pid), CONTINUED, {"nightly": True})
    assert api.state.continued[pid]["parameters"] == {"retrain": True}
    api.state.faults_for, api.state.errors = "continuePipeline", 1  # a 503 is retried
    client.sleep = lambda s: None
    assert client.continue_pipeline(api.state.continuation_key(pid), CONTINUED, {})["message"]
    assert api.state.requests[-2]["operation"] == "continuePipeline"
