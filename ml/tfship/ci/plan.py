"""``tfship ci plan``: a setup workflow's light step; retrain only when the data is new.

The nightly pipeline starts with a setup workflow (``setup: true``) whose one job runs
``tfship ci plan --continue``: it resolves the newest snapshot at the data source (as
``tfship ci watch-data`` does: a folder, an https listing, ``ssh://``, ``s3://``), asks the
deploy target which version serves, reads that version's manifest from the store (or the
host) without fetching the model, and compares the sha256 of the snapshot's bytes with the
sha256 of the data the champion was trained on (``data_sha256`` in its manifest).

:func:`decide` is the rule, a pure function: new data (or no champion yet, or a champion
that does not record its data's sha256) continues the pipeline with the retrain workflow and
``{new_data_uri: <snapshot>#sha256=<hex>}``; the same data ends it, green, with one line saying
so. Only ``new_data_uri`` is sent: CircleCI carries the parameters the pipeline was triggered
with (``retrain=true``, often ``data_uri``) into the continuation and refuses a continuation
that sends one of them again ("Conflicting pipeline parameters."). Continuing is CircleCI's
``POST /pipeline/continue`` with the job's ``CIRCLE_CONTINUATION_KEY`` (a secret: read
here, never printed). When nothing is to run, the pipeline is finished the way CircleCI's
continuation orb's ``finish`` command does it: a continuation with a configuration that runs
nothing, so the key is spent and no workflow (no hold, no approval notice) follows.

Nothing here imports TensorFlow: the setup job installs the slim tfship.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from tfship.ci.api import CONTINUATION_KEY_ENV, CircleCI, check_parameters
from tfship.ci.watch import Snapshot, newest_snapshot
from tfship.errors import ConfigError, StoreError
from tfship.log import event
from tfship.settings import setting
from tfship.sources import DATA
from tfship.store import MANIFEST, ArtifactStore
from tfship.targets import TargetSettings, open_fleet

# What the continuation orb's `finish` sends: a configuration with no workflow to run.
FINISH_CONFIG = "{version: 2, jobs: {}, workflows: {version: 2}}"
CONTINUE, END = "continue", "end"


@dataclass
class PlanSettings:
    """``tfship ci plan``: where snapshots arrive, and how to continue the pipeline."""

    data: str | None = DATA.field(
        optional=True,
        help="Where new snapshots arrive: a folder, an https listing ('<url> <sha256>' lines), "
        "ssh://USER@HOST/PATH, s3://BUCKET/PREFIX/, or one snapshot (#sha256=HEX).",
    )
    continue_pipeline: bool = setting(
        False,
        None,
        f"In a CircleCI setup workflow: continue the pipeline (with {CONTINUATION_KEY_ENV}) "
        "with --continue-config when the data is new, or finish it (nothing runs) when not.",
        flag="--continue",
        switch=True,
    )
    continue_config: Path = setting(
        Path(".circleci/continue.yml"),
        "TFSHIP_CONTINUE_CONFIG",
        "The configuration to continue with (the retrain workflow); it declares the pipeline "
        "parameter new_data_uri (string) and the setup config's (retrain, data_uri, ...).",
        kind="file",
    )


@dataclass(frozen=True)
class ChampionData:
    """The version serving, and the sha256 of the data it was trained on (None: unknown)."""

    version: int
    data_sha256: str | None


@dataclass
class Plan:
    """What the setup job decided, and (with --continue) what it did about it."""

    action: str  # CONTINUE or END
    reason: str
    parameters: dict = field(default_factory=dict)  # the continuation's pipeline parameters
    snapshot: Snapshot | None = None
    champion: ChampionData | None = None
    continued: str | None = None  # with --continue: "retrain" (the config) or "finished"

    def to_dict(self) -> dict:
        return {
            "action": self.action,
            "reason": self.reason,
            "parameters": self.parameters,
            "snapshot": self.snapshot and asdict(self.snapshot),
            "champion": self.champion and asdict(self.champion),
            "continued": self.continued,
        }

    def summary(self) -> str:
        done = {
            None: "",
            "retrain": "; pipeline continued with the retrain workflow",
            "finished": "; pipeline finished: nothing else runs",
        }[self.continued]
        return self.reason + done


def _short(sha: str) -> str:
    return sha[:16]


def decide(snapshot: Snapshot | None, champion: ChampionData | None, source: str) -> Plan:
    """The rule: continue with ``{new_data_uri}`` unless the champion was trained on exactly
    this snapshot's bytes (or there is no snapshot at all)."""
    if snapshot is None:
        return Plan(END, f"no snapshot at {source} yet: nothing to retrain on", champion=champion)
    params = {"new_data_uri": snapshot.data_uri}
    if champion is None:
        return Plan(
            CONTINUE, f"no champion serving yet: retrain on {snapshot.data_uri}", params, snapshot
        )
    if champion.data_sha256 is None:
        return Plan(
            CONTINUE,
            f"the champion (v{champion.version}) does not record its data's sha256 (packaged "
            f"before tfship recorded it): retrain on {snapshot.data_uri} and let it compare",
            params,
            snapshot,
            champion,
        )
    if champion.data_sha256 == snapshot.sha256:
        return Plan(
            END,
            f"no new data since the champion (v{champion.version}, sha256 "
            f"{_short(snapshot.sha256)}...)",
            snapshot=snapshot,
            champion=champion,
        )
    return Plan(
        CONTINUE,
        f"new data: {snapshot.uri} (sha256 {_short(snapshot.sha256)}...) differs from the "
        f"champion's (v{champion.version}, sha256 {_short(champion.data_sha256)}...)",
        params,
        snapshot,
        champion,
    )


def serving_champion(
    where: TargetSettings, store: ArtifactStore, model: str
) -> ChampionData | None:
    """The version the deploy target serves and its data's sha256, as retrain finds its
    champion (the target's answer, then the store, else the host's copy), but reading the
    manifest alone: no model is fetched, nothing is loaded. None: nothing serves yet."""
    with open_fleet(where) as fleet:
        version = fleet.serving_version(model)
        if version is None:
            return None
        try:
            manifest = store.manifest(model, version)
        except StoreError:
            target = fleet.single
            path = f"{target.model_dir(model)}/{version}/{MANIFEST}"
            if not target.host.exists(path):
                raise StoreError(
                    f"version {version} of {model} serves, but neither the store {store.uri} "
                    f"nor {target.host.name} holds its manifest ({MANIFEST})",
                    hint="deploy versions packaged by `tfship package`",
                ) from None
            manifest = json.loads(target.host.read_text(path))
    sha = manifest.get("data_sha256")
    return ChampionData(version, sha.lower() if isinstance(sha, str) else None)


def _source(s: PlanSettings) -> str:
    if not s.data:
        raise ConfigError(
            "no data source to plan on",
            hint=f"set {DATA.env} (or --data) to where snapshots arrive: a folder, an https "
            "listing, ssh://USER@HOST/PATH or s3://BUCKET/PREFIX/",
        )
    return s.data


def _continuation_config(path: Path, parameters: dict) -> str:
    """The configuration file's text, refused (one line) if CircleCI would refuse it for
    not declaring a parameter we send ("Unexpected argument(s)")."""
    try:
        text = path.read_text()
        doc = yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(
            f"--continue-config {path}: not found",
            hint="commit the configuration to continue with (the retrain workflow) there",
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"--continue-config {path}: not readable YAML ({exc})") from None
    declared = (doc or {}).get("parameters") if isinstance(doc, dict) else None
    missing = [k for k in parameters if not isinstance(declared, dict) or k not in declared]
    if missing:
        raise ConfigError(
            f"--continue-config {path} declares no pipeline parameter {', '.join(missing)}: "
            "CircleCI refuses a continuation that sends it",
            hint='declare `new_data_uri: {type: string, default: ""}` under its top-level '
            "parameters",
        )
    return text


def plan(
    s: PlanSettings,
    where: TargetSettings,
    store: ArtifactStore,
    model: str,
    api: CircleCI | None = None,
) -> Plan:
    """Resolve the newest snapshot, find the champion, :func:`decide`; with ``api`` (the
    setup job's client: ``--continue``) continue the pipeline or finish it."""
    source = _source(s)
    key = os.environ.get(CONTINUATION_KEY_ENV, "") if api is not None else ""
    if api is not None and not key:
        raise ConfigError(
            f"--continue: {CONTINUATION_KEY_ENV} is not set",
            hint="--continue runs in a CircleCI setup workflow (`setup: true` config); "
            "without it, plan only says what it would do",
        )
    snapshot = newest_snapshot(source, where.access)
    champion = serving_champion(where, store, model) if snapshot is not None else None
    result = decide(snapshot, champion, source)
    event("ci", f"plan: {result.action}", reason=result.reason)
    if api is None:
        return result
    if result.action == CONTINUE:
        check_parameters(result.parameters)  # CircleCI's limits, before anything is sent
        config = _continuation_config(s.continue_config, result.parameters)
        api.continue_pipeline(key, config, result.parameters)
        result.continued = "retrain"
    else:
        api.continue_pipeline(key, FINISH_CONFIG, {})
        result.continued = "finished"
    event("ci", f"plan: pipeline {result.continued}")
    return result
