"""The tests here drive doit or the console script in subprocesses (or, for the Incus set-up
checks, the real daemon): every one of them is `slow`, given by this folder, so that
`pytest -m 'not slow'` runs exactly `tests/unit/`."""

from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    # the hook sees the whole session's items, not only this folder's
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)
