# The demo payloads of this repository, built from a workspace snapshot with plain nix.
#
# workspace-deps: an index of the modules the package imports (standing in for what a real
#   deps layer would build);
# workspace-build: the SHA-256 of every package source at build time plus the `run-demo`
#   wrapper, which checks inside the guest that the read-only snapshot is exactly what was
#   built, reads the deps index from its mount, and byte-compiles the package.
{ ci, src }:
let
  isPython = path: type: type == "directory" || builtins.match ".*\\.py" (toString path) != null;
  packageSources = builtins.path {
    path = src + "/pikaci";
    name = "pikaci-package-sources";
    filter = isPython;
  };
in
rec {
  workspaceDeps = ci.stagedPayload {
    name = "pikaci-demo-workspace-deps";
    role = "workspaceDeps";
    src = packageSources;
    assetRoots = [{ name = "demo"; relative_path = "share/demo"; }];
    build = ''
      mkdir -p "$out/share/demo"
      cd "$src"
      find . -name '*.py' -exec sed -n 's/^\(import\|from\) \([A-Za-z_][A-Za-z0-9_]*\).*/\2/p' {} + \
        | sort -u > "$out/share/demo/imports.txt"
    '';
  };

  workspaceBuild = ci.stagedPayload {
    name = "pikaci-demo-workspace-build";
    role = "workspaceBuild";
    src = packageSources;
    inputs = { deps = workspaceDeps; };
    assetRoots = [{ name = "demo"; relative_path = "share/demo"; }];
    build = ''
      mkdir -p "$out/share/demo"
      cd "$src"
      find . -name '*.py' | sort | xargs sha256sum > "$out/share/demo/sources.sha256"
      test -s "$deps/share/demo/imports.txt"
    '';
    wrappers.run-demo = ''
      build_root=${ci.kinds.workspaceBuild.guestPath}
      deps_root=${ci.kinds.workspaceDeps.guestPath}
      cd /workspace/snapshot/pikaci
      echo "checking the snapshot against the sources this payload was built from"
      sha256sum --quiet -c "$build_root/share/demo/sources.sha256"
      echo "$(wc -l < "$build_root/share/demo/sources.sha256") modules match"
      echo "modules the package imports (from the deps payload): $(tr '\n' ' ' < "$deps_root/share/demo/imports.txt")"
      scratch=$(mktemp -d)
      python3 - "$scratch" <<'PY'
      import pathlib, py_compile, sys
      count = 0
      for source in sorted(pathlib.Path(".").rglob("*.py")):
          py_compile.compile(str(source), cfile=f"{sys.argv[1]}/{count}.pyc", doraise=True)
          count += 1
      print(f"byte-compiled {count} modules")
      PY
      modules=$(wc -l < "$build_root/share/demo/sources.sha256")
      printf '{"python_modules": %s, "guest_user": "%s"}\n' "$modules" "$(id -un 2>/dev/null || id -u)" \
        > "''${ARTIFACTS:-/tmp}/summary.json"
      echo "demo passed"
    '';
  };
}
