"""What the ``tfship ci`` commands take: the API, the project, and each command's settings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tfship.ci.api import DEFAULT_BASE, CircleCI
from tfship.settings import Setting, setting
from tfship.targets import SSHAccess

PROJECT = Setting(
    None, "CIRCLE_PROJECT_SLUG", "Project slug: gh/org/repo.", flag="--project", required=True
)
BRANCH = Setting(
    None, "TFSHIP_CI_BRANCH", "Branch. Default: main (`ci local`: the checkout's branch)."
)
CONFIG = Setting(
    Path(".circleci/config.yml"), "TFSHIP_CI_CONFIG", "The CircleCI config.", kind="file"
)
PARAMS = Setting(
    (),
    None,
    "Pipeline parameter k=v (repeatable; at most 100, names up to 128 and values up to 512 "
    "characters).",
    flag="--param",
    multiple=True,
)


@dataclass
class ApiSettings:
    """How to reach CircleCI's API v2; every call is retried a bounded number of times."""

    api_url: str = setting(
        DEFAULT_BASE,
        "CIRCLECI_API_URL",
        "API base (CircleCI server installs have their own).",
    )
    token_env: str = setting(
        "CIRCLE_TOKEN", "TFSHIP_TOKEN_ENV", "Variable holding the personal API token."
    )
    timeout: float = setting(
        30.0, "TFSHIP_API_TIMEOUT", "Seconds per request.", flag="--api-timeout", min=0.001
    )
    max_backoff: float = setting(
        60.0,
        "TFSHIP_API_MAX_BACKOFF",
        "The longest wait between tries, seconds.",
        flag="--api-max-backoff",
        min=0.001,
    )

    def client(self) -> CircleCI:
        """A client with the token from the environment variable named by ``token_env``."""
        return CircleCI(
            os.environ.get(self.token_env, ""),
            self.api_url,
            timeout=self.timeout,
            max_backoff=self.max_backoff,
        )


@dataclass
class TriggerSettings:
    """``tfship ci trigger``."""

    project: str = PROJECT.field()
    branch: str | None = BRANCH.field()
    tag: str | None = setting(None, "TFSHIP_CI_TAG", "Tag to run on, instead of a branch.")
    params: tuple[str, ...] = PARAMS.field(
        help="Pipeline parameter k=v (repeatable). Each value takes the type --config "
        "declares (a string parameter stays a string, even 'true' or '42'); with no config "
        "file here, true/false are sent as booleans and digits as integers."
    )
    config: Path = CONFIG.field(
        help="The CircleCI config whose top-level parameters: give each --param its type "
        "(read when the file exists)."
    )
    definition_id: str | None = setting(
        None,
        "TFSHIP_DEFINITION_ID",
        "Use POST .../pipeline/run with this pipeline definition id.",
    )
    wait: bool = setting(False, None, "Follow the pipeline until its workflows exist.", switch=True)


@dataclass
class ApproveSettings:
    """``tfship ci approve``."""

    job: str = setting("hold", "TFSHIP_APPROVAL_JOB", "Name of the approval job.")
    timeout: float = setting(
        300.0,
        "TFSHIP_APPROVAL_TIMEOUT",
        "How long to wait for the approval job to appear, and with --reject for the workflow "
        "to read canceled (seconds).",
        min=0,
    )
    poll: float = setting(5.0, "TFSHIP_APPROVAL_POLL", "Seconds between looks.", min=0.01)
    reject: bool = setting(
        False,
        None,
        "Reject instead: cancel the whole workflow (POST /workflow/{id}/cancel), so nothing "
        "after the hold runs.",
        switch=True,
    )


DAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")


@dataclass
class ScheduleSettings:
    """``tfship ci schedule create``."""

    project: str = PROJECT.field()
    name: str = setting("nightly-retrain", "TFSHIP_SCHEDULE_NAME", "Schedule name.")
    hours: tuple[int, ...] = setting(
        (2,),
        None,
        "UTC hour (repeatable).",
        flag="--hour",
        multiple=True,
        min=0,
        max=23,
        value_type=int,
    )
    days: tuple[str, ...] = setting(
        DAYS, None, "Day (repeatable).", flag="--day", multiple=True, choices=DAYS
    )
    branch: str | None = BRANCH.field()
    params: tuple[str, ...] = PARAMS.field(
        help="Pipeline parameter k=v, added to retrain=true (repeatable; retrain=false replaces "
        "it). Each value takes the type the config declares: a string parameter stays a string. "
        "Values of more than 512 characters are refused: pass a file's path or a URI instead."
    )
    config: Path = CONFIG.field(
        help="The CircleCI config whose top-level parameters: give each --param its type."
    )


@dataclass
class WatchSettings:
    """``tfship ci watch-data``."""

    project: str = PROJECT.field()
    state: Path = setting(
        Path(".tfship-watch.json"),
        "TFSHIP_WATCH_STATE",
        "The record of snapshots triggered (and of a trigger being sent); without it the "
        "newest snapshot is triggered again. <state>.lock keeps two polls from overlapping.",
        kind="file",
    )
    branch: str | None = BRANCH.field()
    interval: float = setting(300.0, "TFSHIP_WATCH_INTERVAL", "Seconds between polls.", min=0.1)
    max_polls: int = setting(
        1, "TFSHIP_WATCH_MAX_POLLS", "Polls before exiting (1: check once, for cron).", min=1
    )
    access: SSHAccess = field(default_factory=SSHAccess)  # for ssh:// sources


@dataclass
class LocalSettings:
    """``tfship ci local``."""

    config: Path = CONFIG.field()
    params: tuple[str, ...] = PARAMS.field(help="Pipeline parameter k=v (repeatable).")
    envs: tuple[str, ...] = setting(
        (), None, "Extra environment k=v for every job.", flag="--env", multiple=True
    )
    branch: str | None = BRANCH.field(
        help="Branch for filters and pipeline.git.branch. Default: the checkout's branch."
    )
    approve: tuple[str, ...] = setting(
        (), None, "Approve this approval job (repeatable).", multiple=True
    )
    reject: tuple[str, ...] = setting(
        (), None, "Reject this approval job (repeatable).", multiple=True
    )
    jobs: int = setting(1, "TFSHIP_CI_JOBS", "Independent jobs to run at once.", min=1)
    orbs: tuple[str, ...] = setting(
        (),
        None,
        "Run a registry orb (orbs: {x: NAMESPACE/ORB@VERSION}) from an orb source folder: "
        "NAMESPACE/ORB=FOLDER, e.g. tfship/tfship=orb/src (repeatable).",
        flag="--orb",
        multiple=True,
    )
    out: Path = setting(
        Path(".tfship-ci"),
        "TFSHIP_CI_OUT",
        "Where job folders, workspace layers, artifacts and test results go (emptied first).",
        kind="dir",
    )
