"""Evaluate the spec's invariants and print the report (text or JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

# each check module registers its checks in CHECKS when imported
from . import import_rules, independence, lanes, manifest, path_filters  # noqa: F401
from .context import CHECKS, Context
from .results import FAIL, UNCHECKED, Result
from .spec import SPEC_RELPATH, SpecError, load_spec

ROOT = Path(__file__).resolve().parents[2]  # scripts/invariant_checks/ -> the repository


def evaluate(spec: Dict[str, Any], ctx: Context) -> List[Dict[str, Any]]:
    results = []
    for entry in spec["invariant"]:
        invariant_id = entry["id"]
        function = CHECKS.get(invariant_id)
        if entry["kind"] == "allowed":
            result = Result(UNCHECKED, "kind allowed: nothing to check", entry.get("scope", []))
        elif function is None:
            result = Result(UNCHECKED, "no deterministic check is registered for this id", [])
        else:
            result = function(ctx, entry)
        results.append(
            {
                "id": invariant_id,
                "status": result.status,
                "reason": result.reason,
                "evidence": result.evidence,
            }
        )
    return results


def render(name: str, results: Sequence[Dict[str, Any]]) -> str:
    lines = [f"invariants: {name}"]
    for result in results:
        lines.append(f"{result['status'].upper()} {result['id']}: {result['reason']}")
        lines.extend(f"  evidence: {item}" for item in result["evidence"])
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Check the repository's invariants.")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to check")
    parser.add_argument("--spec", type=Path, help=f"the spec (default: <root>/{SPEC_RELPATH})")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead")
    parser.add_argument("--json-out", type=Path, help="also write the JSON report to FILE")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    root = args.root.resolve()
    spec_path = args.spec if args.spec is not None else root / SPEC_RELPATH
    try:
        spec = load_spec(spec_path)
    except SpecError as exc:
        print(f"check_invariants: {exc}", file=sys.stderr)
        return 2
    name = str(spec.get("name", "unnamed"))
    results = evaluate(spec, Context(root))
    report = {"name": name, "results": results}
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(render(name, results))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if any(result["status"] == FAIL for result in results) else 0
