#!/usr/bin/env python3
"""Check this repository's invariants (`invariants/invariants.toml`) deterministically.

    python scripts/check_invariants.py [--root DIR] [--spec FILE] [--json] [--json-out FILE]

Every `must` invariant is decided by a check function registered under its id; an invariant
without one, and every `allowed` invariant, is reported UNCHECKED, never PASS. Output:

    invariants: <name>
    PASS|FAIL|UNCHECKED <id>: <reason>
      evidence: <path>[:<line>]

`--json` prints `{"name", "results": [{"id", "status", "reason", "evidence"}]}` instead
(status `pass`, `fail` or `unchecked`); `--json-out FILE` writes it next to the text output.
Exit status: 1 when an invariant fails, 2 for a bad spec or bad arguments (one line on stderr),
0 otherwise.

The catalog is read from `dodo.py` with `ast`, never imported: nothing of the repository runs.
An expression the checks need but cannot resolve statically (a call, `**kwargs`, a name not
bound to a constant) fails the invariant with a reason naming file:line. The checks live in
the `invariant_checks` package next to this file (one module per family); TOML is read with
`tomllib`, or `tomli` below Python 3.11. Runs on Python 3.9.
"""

from __future__ import annotations

import sys
from pathlib import Path

# dodo.py and the tests run this file by path (also in copies of the repository): the package
# is found next to it, not on an installed path
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from invariant_checks.context import CHECKS  # noqa: E402
from invariant_checks.runner import main  # noqa: E402
from invariant_checks.spec import SpecError, load_spec  # noqa: E402

__all__ = ["CHECKS", "SpecError", "load_spec", "main"]

if __name__ == "__main__":
    sys.exit(main())
