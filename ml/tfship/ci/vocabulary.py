"""CircleCI's config vocabulary, stated once for the local runner and the orb checks.

``tfship.ci.workflow`` (what ``tfship ci local`` runs) and ``tools/check_orb.py`` (the
orb-tools review rules and the schema gaps) read configs with these names and patterns; a
``<<`` escaped as ``\\<<`` is literal text for both.
"""

from __future__ import annotations

import re

# Steps CircleCI provides (https://circleci.com/docs/configuration-reference/#steps).
BUILTIN_STEPS = {
    "run",
    "checkout",
    "setup_remote_docker",
    "save_cache",
    "restore_cache",
    "deploy",
    "store_artifacts",
    "store_test_results",
    "persist_to_workspace",
    "attach_workspace",
    "add_ssh_keys",
    "when",
    "unless",
}
# The ones `tfship ci local` runs (the rest are refused by name before anything runs).
LOCAL_STEPS = BUILTIN_STEPS - {"setup_remote_docker", "deploy", "add_ssh_keys"}
CONFIG_KEYS = {
    "version",
    "orbs",
    "commands",
    "executors",
    "jobs",
    "workflows",
    "parameters",
    "setup",
}
ORB_KEYS = {
    "version",
    "description",
    "display",
    "orbs",
    "commands",
    "executors",
    "jobs",
    "examples",
}
JOB_KEYS = {
    "description",
    "parameters",
    "steps",
    "executor",
    "docker",
    "machine",
    "macos",
    "resource_class",
    "environment",
    "working_directory",
    "shell",
    "parallelism",
}
WORKFLOW_ENTRY_KEYS = {
    "requires",
    "name",
    "context",
    "filters",
    "type",
    "matrix",
    "pre-steps",
    "post-steps",
    "serial-group",
    "override-with",
}
# What `tfship ci local` honours of a workflow entry (serial-group is accepted: locally one
# pipeline runs at a time, so a group never has anything to wait for).
LOCAL_ENTRY_KEYS = {"requires", "name", "context", "filters", "type", "serial-group"}
RUN_KEYS = {
    "name",
    "command",
    "environment",
    "working_directory",
    "shell",
    "when",
    "no_output_timeout",
}
PARAM_TYPES = {"string", "boolean", "integer", "enum", "env_var_name", "steps", "executor"}

# << parameters.x >>, << pipeline.x >>, a value that is one whole parameter, an include.
PARAM_REF = re.compile(r"(?<!\\)<<\s*parameters\.([A-Za-z0-9_-]+)\s*>>")
PIPELINE_REF = re.compile(r"(?<!\\)<<\s*pipeline\.([A-Za-z0-9_.-]+)\s*>>")
PIPELINE_PARAM_REF = re.compile(r"(?<!\\)<<\s*pipeline\.parameters\.([A-Za-z0-9_-]+)\s*>>")
WHOLE_PARAM_REF = re.compile(r"^\s*(?<!\\)<<\s*(pipeline\.)?parameters\.([A-Za-z0-9_-]+)\s*>>\s*$")
INCLUDE = re.compile(r"^<<\s*include\(([^()]+)\)\s*>>$")
