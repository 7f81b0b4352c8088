#!/usr/bin/env bash
# The demo lane: runs inside the materialized workspace of the `pikaci` target's snapshot.
# Byte-compiles every Python file of the snapshot and leaves a summary in $ARTIFACTS.
set -euo pipefail

echo "demo lane in ${PWD}"
echo "run ${PIKACI_RUN_ID:-?}, job ${PIKACI_JOB_ID:-?}, snapshot ${PIKACI_SNAPSHOT_DIR:-?}"

files=$(find . -type f | wc -l)
py_files=$(find . -name '*.py' -type f | wc -l)
echo "snapshot holds ${files} files, ${py_files} Python modules"

# compile into a scratch prefix so the workspace stays as the snapshot left it
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 - "$scratch" <<'PY'
import pathlib, py_compile, sys
scratch = pathlib.Path(sys.argv[1])
count = 0
for source in sorted(pathlib.Path(".").rglob("*.py")):
    py_compile.compile(str(source), cfile=str(scratch / f"{count}.pyc"), doraise=True)
    count += 1
print(f"byte-compiled {count} modules")
PY

cat > "${ARTIFACTS}/summary.json" <<JSON
{"files": ${files}, "python_modules": ${py_files}, "run_id": "${PIKACI_RUN_ID:-}"}
JSON
echo "wrote ${ARTIFACTS}/summary.json"
