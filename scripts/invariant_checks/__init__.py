"""The checks behind `scripts/check_invariants.py`: the spec, static reading of the repository,
one module per family of checks, and the runner.

Nothing of the checked repository is imported or run: every check reads files with `ast` or a
TOML parser.
"""
