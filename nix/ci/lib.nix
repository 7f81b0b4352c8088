# nixpkgs-free helpers for staged payloads: the payload manifest and lane wrapper scripts.
#
# Used by this repository's demo payloads and tests (built with plain `nix`, no nixpkgs) and by
# nix/ci/linux-rust.nix (production, with nixpkgs and crane), so both write the same manifest.
#
# The builder is a host shell, so building needs `sandbox = false` (Debian's default) or
# `extra-sandbox-paths = /bin /usr /lib /lib64`. Production payloads built with nixpkgs use
# `manifestJson` / `wrapperText` / `installScript` from their own stdenv instead.
{ system ? "x86_64-linux"
, shell ? "/bin/sh"
, hostPath ? "/usr/bin:/bin"
}:
rec {
  # Interpreters inside the guest live in its system profile, never in a /nix/store path the
  # guest may not have.
  guestBin = "/run/current-system/sw/bin";
  guestBash = "${guestBin}/bash";

  kinds = {
    workspaceDeps = {
      kind = "staged_linux_workspace_deps_v1";
      mountName = "workspace_deps_root";
      guestPath = "/staged/linux-rust/workspace-deps";
    };
    workspaceBuild = {
      kind = "staged_linux_workspace_build_v1";
      mountName = "workspace_build_root";
      guestPath = "/staged/linux-rust/workspace-build";
    };
  };

  # share/pikaci/payload-manifest.json as Nix data; builtins.toJSON sorts keys.
  payloadManifest = { kind, mountName, guestPath, entrypoints ? [ ], assetRoots ? [ ] }: {
    schema_version = 1;
    inherit kind;
    entrypoints = map (name: { inherit name; relative_path = "bin/${name}"; })
      (builtins.sort builtins.lessThan entrypoints);
    asset_roots = assetRoots;
    mounts = [{
      name = mountName;
      relative_path = ".";
      guest_path = guestPath;
      read_only = true;
    }];
  };

  manifestJson = args: builtins.toJSON (payloadManifest args) + "\n";

  # A lane wrapper: guest-local bash, strict mode, then the body.
  wrapperText = body: ''
    #!${guestBash}
    set -euo pipefail
    ${body}
  '';

  # Shell lines that install the wrappers and the manifest into $out (any POSIX sh + coreutils).
  installScript = { wrappers, manifestFile }:
    let
      names = builtins.attrNames wrappers;
      installOne = name:
        let file = builtins.toFile name (wrapperText wrappers.${name});
        in "cp ${file} \"$out/bin/${name}\"; chmod 555 \"$out/bin/${name}\"";
    in
    builtins.concatStringsSep "\n" ([
      "mkdir -p \"$out/bin\" \"$out/share/pikaci\""
      "cp ${manifestFile} \"$out/share/pikaci/payload-manifest.json\""
    ] ++ map installOne names);

  # A staged payload without nixpkgs: `build` runs first (with $src, $out and `inputs` in the
  # environment), then the wrappers and the manifest are installed.
  stagedPayload =
    { name
    , role # "workspaceDeps" | "workspaceBuild"
    , src ? null
    , wrappers ? { }
    , build ? ""
    , assetRoots ? [ ]
    , inputs ? { } # extra environment: derivations or strings the build script uses
    }:
    let
      shape = kinds.${role};
      manifestFile = builtins.toFile "payload-manifest.json" (manifestJson {
        inherit (shape) kind mountName guestPath;
        inherit assetRoots;
        entrypoints = builtins.attrNames wrappers;
      });
      script = ''
        set -eu
        mkdir -p "$out"
        ${build}
        ${installScript { inherit wrappers manifestFile; }}
      '';
    in
    derivation ({
      inherit name system;
      builder = shell;
      args = [ "-c" script ];
      PATH = hostPath;
    } // (if src == null then { } else { inherit src; }) // inputs);
}
