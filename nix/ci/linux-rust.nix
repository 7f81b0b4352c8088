# Staged payloads for a Rust workspace (production: needs nixpkgs and crane).
#
#   workspaceDeps   crane's buildDepsOnly: the workspace's dependencies compiled by the same
#                   `cargo test --no-run` the build runs, so the build only compiles the
#                   workspace's own crates. Mounted read-only at /staged/linux-rust/workspace-deps.
#   workspaceBuild  the workspace's test executables (only those some lane runs), one list of
#                   them per lane in share/pikaci/lanes/<lane>.tsv and one `bin/run-<lane>`
#                   wrapper per lane. Mounted read-only at /staged/linux-rust/workspace-build.
#
# Both carry share/pikaci/payload-manifest.json written by nix/ci/lib.nix, like the demo
# payloads, so pikaci reads the same manifest whichever way a payload was built.
#
# Lanes (`lanes.<id>`, all fields optional):
#   package   a workspace package name; null = every package selected by `cargoTestArgs`
#   binaries  cargo target names to run (e.g. [ "integration" "mylib" ]); null = all of them
#   testArgs  shell words appended to every test executable's command line (e.g.
#             "--test-threads=1 --skip slow"); arguments given to `run-<lane>` come after them
# With no lanes at all there is one lane, `workspace`, running every test executable.
#
# Wrappers run inside the guest, which has no host /nix/store paths on its PATH: they start with
# `#!/run/current-system/sw/bin/bash` and name no store path at all (lib.nix installs them with
# builtins.toFile, which rejects text that refers to a derivation output).
{ pkgs
, crane
, src
, cargoLock ? src + "/Cargo.lock"
, pname ? "workspace"
, version ? "0.0.0"
, lanes ? { }
, cargoTestArgs ? "--workspace"
, nativeBuildInputs ? [ ]
, buildInputs ? [ ]
, ciLib ? import ./lib.nix { system = pkgs.stdenv.hostPlatform.system; }
}:
let
  inherit (builtins) attrNames concatStringsSep filter isList isString mapAttrs match;

  # A crane flake input (`crane.mkLib pkgs`) or a crane lib that is already instantiated, e.g.
  # `(crane.mkLib pkgs).overrideToolchain rustToolchain`.
  craneLib = if crane ? buildDepsOnly then crane else crane.mkLib pkgs;

  deps = ciLib.kinds.workspaceDeps;
  build = ciLib.kinds.workspaceBuild;
  snapshot = "/workspace/snapshot";
  jq = "${pkgs.jq}/bin/jq";

  shellQuote = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";

  # -- lanes ---------------------------------------------------------------------------------

  laneDefaults = { package = null; binaries = null; testArgs = ""; };

  # Package and target names are spliced into the build script, so only cargo's own characters.
  isCargoName = name: isString name && match "[A-Za-z0-9_-]+" name != null;

  checkLane = id: lane:
    let
      unknown = filter (key: !(laneDefaults ? ${key})) (attrNames lane);
      spec = laneDefaults // lane;
      fail = msg: throw "linux-rust.nix: lane `${id}`: ${msg}";
    in
    # ids end up in file names (bin/run-<id>, share/pikaci/lanes/<id>.tsv): pikaci's id rule
    if match "[A-Za-z0-9][A-Za-z0-9._-]{0,127}" id == null then
      fail "ids are 1-128 characters from [A-Za-z0-9._-], starting with a letter or digit"
    else if unknown != [ ] then
      fail "unknown attribute(s) ${concatStringsSep ", " unknown} (known: ${
        concatStringsSep ", " (attrNames laneDefaults)})"
    else if !(spec.package == null || isCargoName spec.package) then
      fail "package must be null or a cargo package name"
    else if !(spec.binaries == null
      || (isList spec.binaries && spec.binaries != [ ] && builtins.all isCargoName spec.binaries))
    then
      fail "binaries must be null or a non-empty list of cargo target names"
    else if !(isString spec.testArgs) then
      fail "testArgs must be a string of shell words"
    else spec;

  laneSpecs = mapAttrs checkLane (if lanes == { } then { workspace = { }; } else lanes);
  laneIds = attrNames laneSpecs;

  # -- shared by both derivations, so cargo's fingerprints of the dependencies match ----------

  # Identical in both derivations on purpose: any difference in flags, features or profile makes
  # cargo rebuild the dependencies in workspaceBuild. `--message-format` does not count.
  cargoTestNoRun = "cargo test --locked --no-run ${cargoTestArgs}";

  commonArgs = {
    inherit src cargoLock pname version buildInputs;
    strictDeps = true;
    # stdenv's fixup would rewrite `#!/run/current-system/sw/bin/bash` to a host /nix/store bash
    # the guest does not have
    dontPatchShebangs = true;
    # Only build tools and crane's own hooks here: adding a package to one derivation and not
    # the other changes PATH / PKG_CONFIG_PATH and reruns every `*-sys` build script.
    nativeBuildInputs = nativeBuildInputs
      ++ (if craneLib ? removeReferencesToVendoredSourcesHook
          # panic locations would otherwise keep the vendored sources in the payload's closure
          then [ craneLib.removeReferencesToVendoredSourcesHook ] else [ ]);
  };

  manifestText = shape: extra:
    ciLib.manifestJson ({ inherit (shape) kind mountName guestPath; } // extra);
  manifestFile = shape: extra: builtins.toFile "payload-manifest.json" (manifestText shape extra);

  depsManifestArgs = {
    # `use-symlink` leaves a plain target/ tree (not target.tar.zst), usable from the mount
    assetRoots = [{ name = "target"; relative_path = "target"; }];
  };

  buildManifestArgs = {
    entrypoints = map (id: "run-${id}") laneIds;
    assetRoots = [
      { name = "pikaci_share"; relative_path = "share/pikaci"; }
      { name = "target"; relative_path = "target"; }
    ];
  };

  # -- wrappers ------------------------------------------------------------------------------

  # Runs a lane's test executables the way `cargo test` does: each from its package directory
  # (in the read-only snapshot) with CARGO_MANIFEST_DIR set, stdin closed. Every executable runs
  # even after a failure; the wrapper fails if any did.
  laneWrapper = id: lane: ''
    build_root=${build.guestPath}
    snapshot=${snapshot}
    list="$build_root/share/pikaci/lanes/${id}.tsv"
    export PATH="${ciLib.guestBin}''${PATH:+:$PATH}"
    cd "$snapshot"
    ran=0
    failed=()
    while IFS=$'\t' read -r -u 3 package_dir test_binary; do
      ran=$((ran + 1))
      echo "[pikaci] ${id}: target/$test_binary (in $package_dir)"
      if ! (cd "$snapshot/$package_dir" && CARGO_MANIFEST_DIR="$snapshot/$package_dir" \
        "$build_root/target/$test_binary" ${lane.testArgs} "$@" </dev/null); then
        failed+=("$test_binary")
      fi
    done 3<"$list"
    if [ "$ran" -eq 0 ]; then
      echo "[pikaci] ${id}: $list lists no test executable" >&2
      exit 1
    fi
    if [ "''${#failed[@]}" -gt 0 ]; then
      echo "[pikaci] ${id}: ''${#failed[@]} of $ran test executables failed: ''${failed[*]}" >&2
      exit 1
    fi
    echo "[pikaci] ${id}: $ran test executables passed"
  '';

  wrapperBodies = builtins.listToAttrs (map
    (id: { name = "run-${id}"; value = laneWrapper id laneSpecs.${id}; })
    laneIds);

  # -- build-time selection ------------------------------------------------------------------

  # cargo-build.json -> test-executables.tsv: package, package dir (relative to the workspace
  # root), cargo target name, executable (relative to the target directory). Package names come
  # from `cargo metadata`, since compiler-artifact messages only carry an opaque package id.
  testExecutablesJq = ''
    ($meta[0].workspace_root + "/") as $root
    | ($meta[0].target_directory + "/") as $target
    | ($meta[0].packages | map({ key: .id, value: .name }) | from_entries) as $names
    | select(.reason == "compiler-artifact" and .profile.test and .executable != null)
    | if (.executable | startswith($target)) then . else
        error("test executable outside the target directory: " + .executable) end
    | [ ($names[.package_id] // error("not a workspace package: " + .package_id)),
        (.manifest_path | rtrimstr("Cargo.toml") | ltrimstr($root) | rtrimstr("/")
          | if . == "" then "." else . end),
        .target.name,
        (.executable | ltrimstr($target)) ]
    | @tsv
  '';

  # test-executables.tsv -> share/pikaci/lanes/<lane>.tsv (package dir, executable). Fails the
  # build when a lane selects nothing or names a target that was not built, so a typo in a lane
  # is a build error rather than a lane that passes without running anything.
  selectLaneAwk = ''
    BEGIN { n = split(names, want, " "); for (i = 1; i <= n; i++) seen[want[i]] = 0 }
    (package == "" || $1 == package) && (n == 0 || ($3 in seen)) {
      print $2 "\t" $4; found++; if (n) seen[$3] = 1
    }
    END {
      for (name in seen) if (!seen[name]) {
        print "lane " lane ": no test executable for target " name > "/dev/stderr"; bad = 1
      }
      if (!found) { print "lane " lane ": selects no test executable" > "/dev/stderr"; bad = 1 }
      exit bad
    }
  '';

  selectLane = id: lane:
    let binaries = if lane.binaries == null then [ ] else lane.binaries;
    in
    concatStringsSep " " [
      "awk -F '\\t'"
      "-v lane=${shellQuote id}"
      "-v package=${shellQuote (if lane.package == null then "" else lane.package)}"
      "-v names=${shellQuote (concatStringsSep " " binaries)}"
      (shellQuote selectLaneAwk)
      "\"$out/share/pikaci/test-executables.tsv\" > \"$out/share/pikaci/lanes/${id}.tsv\""
    ];

  wrapperTexts = mapAttrs (name: body: ciLib.wrapperText body) wrapperBodies;

  workspaceDeps = craneLib.buildDepsOnly (commonArgs // {
    buildPhaseCargoCommand = cargoTestNoRun;
    doCheck = false; # the build phase already compiled the tests' dependencies
    installCargoArtifactsMode = "use-symlink";
    # crane's own postInstall hook moves target/ into $out; this adds the manifest
    postInstall = ciLib.installScript {
      wrappers = { };
      manifestFile = manifestFile deps depsManifestArgs;
    };
    passthru.pikaci.manifest = manifestText deps depsManifestArgs;
  });

  workspaceBuild = craneLib.mkCargoDerivation (commonArgs // {
    pnameSuffix = "-build";
    cargoArtifacts = workspaceDeps;
    # only what installPhaseCommand copies, not crane's whole target directory
    doInstallCargoArtifacts = false;

    buildPhaseCargoCommand = ''
      ${cargoTestNoRun} --message-format json-render-diagnostics > cargo-build.json
      cargo metadata --locked --offline --no-deps --format-version 1 > cargo-metadata.json
    '';

    installPhaseCommand = ''
      mkdir -p "$out/target" "$out/share/pikaci/lanes"
      ${jq} -r --slurpfile meta cargo-metadata.json ${shellQuote testExecutablesJq} \
        cargo-build.json > test-executables.unsorted
      LC_ALL=C sort test-executables.unsorted > "$out/share/pikaci/test-executables.tsv"
      ${concatStringsSep "\n" (map (id: selectLane id laneSpecs.${id}) laneIds)}

      # copy only the executables some lane runs, keeping their place under target/
      target_dir=$(${jq} -r .target_directory cargo-metadata.json)
      cut -f2 "$out"/share/pikaci/lanes/*.tsv | LC_ALL=C sort -u > selected-executables.txt
      while IFS= read -r test_binary; do
        (cd "$target_dir" && cp --parents -- "$test_binary" "$out/target/")
      done < selected-executables.txt

      ${ciLib.installScript {
        wrappers = wrapperBodies;
        manifestFile = manifestFile build buildManifestArgs;
      }}
    '';

    # What the payload installs, as data: `nix eval` shows it without building anything.
    passthru.pikaci = {
      manifest = manifestText build buildManifestArgs;
      wrappers = wrapperTexts;
      lanes = laneSpecs;
    };
  });
in
{
  inherit workspaceDeps workspaceBuild;
}
