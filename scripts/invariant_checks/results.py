"""What a check returns: a status, a one-line reason and where the evidence is."""

from __future__ import annotations

from typing import List, Sequence, Tuple

PASS, FAIL, UNCHECKED = "pass", "fail", "unchecked"

Problem = Tuple[str, str]  # (message, "path:line")


class Result:
    def __init__(self, status: str, reason: str, evidence: Sequence[str]) -> None:
        self.status = status
        self.reason = reason
        self.evidence = list(evidence)


def verdict(problems: Sequence[Problem], passed: str, examined: Sequence[str]) -> Result:
    """PASS with `passed` and `examined` as evidence, or FAIL with every problem, each place
    named once."""
    if not problems:
        return Result(PASS, passed, examined)
    evidence: List[str] = []
    for _, where in problems:
        if where not in evidence:
            evidence.append(where)
    return Result(FAIL, "; ".join(message for message, _ in problems), evidence)
