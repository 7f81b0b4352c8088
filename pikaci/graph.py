"""`declare` for existing `dodo.py` files: `DOIT_CONFIG, task_pikaci = declare(CATALOG, __file__)`.

The doit layer lives in `pikaci.tasks`; this name stays so that catalogs keep working.
"""

from __future__ import annotations

from pikaci.tasks.loader import declare

__all__ = ["declare"]
