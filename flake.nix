{
  description = "pikaci's own staged CI payloads (no inputs: builds offline with plain nix)";

  outputs = { self }:
    let
      system = "x86_64-linux";
      ci = import ./nix/ci/lib.nix { inherit system; };
      demo = import ./nix/ci/demo.nix { inherit ci; src = ./.; };
    in
    {
      ci.${system} = {
        demoWorkspaceDeps = demo.workspaceDeps;
        demoWorkspaceBuild = demo.workspaceBuild;
      };
    };
}
