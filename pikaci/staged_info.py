"""`pikaci staged-linux-target-info <target>`: what a CI script needs to know of a staged
target, in the reference's shape (its §1: the JSON object and the shell-assignable lines).

Every target with staged payloads qualifies. Fields with no counterpart in a pikaci catalog are
present and null (`shadow_recipe`; `workspace_output_system` when the attribute is not
`ci.<system>.<name>`)."""

from __future__ import annotations

import re
from typing import Any, Dict, Optional

from pikaci.catalog import Catalog, Installable, Target

_SYSTEM_ATTR = re.compile(r"^ci\.([A-Za-z0-9_]+-[A-Za-z0-9_]+)\.")


class TargetInfoError(Exception):
    """Not a target, or one without staged payloads; one line."""


def installable_text(ref: Installable) -> str:
    """As the reference prints it: `.#<attr>` of the flake, else `<file>#<attr>`."""
    return f"{ref.file or '.'}#{ref.attr}"


def output_system(attr: str) -> Optional[str]:
    match = _SYSTEM_ATTR.match(attr)
    return match.group(1) if match else None


def target_info(catalog: Catalog, target_id: str) -> Dict[str, Any]:
    target: Optional[Target] = catalog.target(target_id)
    if target is None:
        raise TargetInfoError(f"unknown target `{target_id}`")
    payloads = target.payloads
    if payloads is None:
        raise TargetInfoError(f"target `{target_id}` has no staged payloads")
    # the payload id is the prefix of its prepare nodes (pikaci.plan.build_node)
    return {
        "target_id": target.id,
        "target_description": target.description or None,
        "shared_prepare_node_prefix": payloads.id,
        "shared_prepare_description": f"staged payloads `{payloads.id}`",
        "workspace_deps_output_name": payloads.deps.attr,
        "workspace_build_output_name": payloads.build.attr,
        "workspace_output_system": output_system(payloads.deps.attr),
        "workspace_deps_installable": installable_text(payloads.deps),
        "workspace_build_installable": installable_text(payloads.build),
        "shadow_recipe": None,
    }


def single_quoted(value: Optional[str]) -> str:
    """`'value'` as a POSIX shell reads it back, whatever the value holds."""
    return "'" + (value or "").replace("'", "'\\''") + "'"


def human_lines(info: Dict[str, Any]) -> str:
    """The reference's human form: `key=value` lines, descriptions single-quoted."""
    return (
        f"target_id={info['target_id']}\n"
        f"target_description={single_quoted(info['target_description'])}\n"
        f"payload_workspace-deps_installable={info['workspace_deps_installable']}\n"
        f"payload_workspace-build_installable={info['workspace_build_installable']}\n"
        f"shadow_recipe={single_quoted(info['shadow_recipe'])}\n"
    )
