# NixOS configuration of the Incus virtual machine image pikaci runs staged lanes in
# (alias `pikaci/dev`). docs/nix.md shows how a flake builds and imports it.
#
# The guest gets everything through Incus: pikaci starts the VM, attaches the workspace snapshot
# and the staged payloads read-only (virtiofs) at the paths below, writes the guest request and
# runs `pikaci-incus-run <request>` with `incus exec`. Hence no sshd, and every interpreter a
# lane uses comes from the system profile (/run/current-system/sw/bin), never from a host
# /nix/store path.
{ config, lib, pkgs, modulesPath, ... }:
let
  guestBin = "/run/current-system/sw/bin";

  # pikaci/guest/runner.py is one stdlib-only Python file whose own shebang points at the
  # system profile's python3. writeScriptBin installs the text as-is (no shebang patching), so
  # the script keeps working from the guest's profile and does not pin a python store path.
  runnerText = builtins.readFile ../../pikaci/guest/runner.py;
  runnerShebang = "#!${guestBin}/python3";
  runner = pkgs.writeScriptBin "pikaci-incus-run" runnerText;

  stagedRoot = "/staged/linux-rust";

  readme = ''
    pikaci Incus guest (image alias pikaci/dev, host name pikaci-incus-dev)

    pikaci runs one lane per VM:
      incus exec <vm> -- ${guestBin}/pikaci-incus-run /run/pika-cloud/guest-request.json
    The request is {"schema_version": 2, "command", "timeout_secs", "run_as_root"}; the command
    runs under bash in /workspace/snapshot, as user pikaci unless run_as_root.

    Layout
      /workspace/snapshot                  the lane's workspace snapshot (read-only mount)
      ${stagedRoot}/workspace-deps    workspaceDeps payload (read-only mount)
      ${stagedRoot}/workspace-build   workspaceBuild payload (read-only mount):
                                           bin/run-<lane> wrappers, target/, share/pikaci/
      /run/pika-cloud/                     guest-request.json, status.json, events.jsonl,
                                           result.json (the lane's terminal result)
      /run/pika-cloud/logs/guest.log       everything the runner and the command printed
      /run/pika-cloud/artifacts/           files the lane leaves for the host
      /cargo-home, /cargo-target           CARGO_HOME and CARGO_TARGET_DIR (owned by pikaci)
      /home/pikaci                         HOME of user pikaci (uid 1000, group users)

    Interpreters are the system profile's (${guestBin}); payload wrappers start with
    #!${guestBin}/bash.
  '';
in
{
  # incus-virtual-machine.nix (nixpkgs >= 24.05) is the VM flavour of the Incus image modules:
  # the qemu-guest profile, an EFI disk layout (root ext4 labelled `nixos`, grown on boot),
  # `system.build.qemuImage` (qcow2) and, through lxc-instance-common.nix,
  # `system.build.metadata` (the image metadata tarball). A VM rather than a container because
  # staged payloads are attached as virtiofs disks and lanes get their own kernel. Older
  # nixpkgs have the same thing as lxd-virtual-machine.nix + the lxd agent.
  imports = [ "${modulesPath}/virtualisation/incus-virtual-machine.nix" ];

  assertions = [{
    assertion = builtins.substring 0 (builtins.stringLength runnerShebang) runnerText
      == runnerShebang;
    message = "pikaci/guest/runner.py must start with `${runnerShebang}` (guest-local python)";
  }];

  networking.hostName = "pikaci-incus-dev";

  # systemd-networkd with DHCPv4 on whatever NIC Incus gives the VM; the instance is reachable
  # only through the Incus agent, so no IPv6 router advertisements.
  networking.useNetworkd = true;
  networking.useDHCP = false;
  systemd.network = {
    enable = true;
    wait-online.enable = true;
    networks."10-pikaci-uplink" = {
      matchConfig.Name = "en* eth*";
      networkConfig = { DHCP = "ipv4"; IPv6AcceptRA = false; };
      linkConfig.RequiredForOnline = "routable";
    };
  };
  services.resolved.enable = true;

  # `incus exec` and `incus file` go through the agent (virtio-vsock), not through the network.
  virtualisation.incus.agent.enable = true;

  # The Incus image modules turn sshd on (mkDefault) and documentation on; neither belongs here.
  services.openssh.enable = lib.mkForce false;
  documentation.enable = lib.mkForce false;
  documentation.nixos.enable = lib.mkForce false;

  nix.settings.experimental-features = [ "nix-command" "flakes" ];

  users.users.pikaci = {
    isNormalUser = true;
    uid = 1000;
    group = "users"; # gid 100 on NixOS
    home = "/home/pikaci";
    createHome = true;
    description = "pikaci lane commands";
  };

  environment.systemPackages = with pkgs; [
    bash
    coreutils
    python3
    git
    cacert
    util-linux
    procps
    findutils
    gnugrep
    gnused
    gawk
    gnutar # pikaci collects /run/pika-cloud with one `tar` through `incus exec`
    jq
    which
    runner
  ];

  # Mount points and writable state. The runner also creates what it needs under
  # /run/pika-cloud and fixes ownership of the pikaci-owned directories at the start of a lane.
  systemd.tmpfiles.rules = [
    "d /workspace 0755 root root -"
    "d /workspace/snapshot 0755 root root -"
    "d /staged 0755 root root -"
    "d ${stagedRoot} 0755 root root -"
    "d ${stagedRoot}/workspace-deps 0755 root root -"
    "d ${stagedRoot}/workspace-build 0755 root root -"
    "d /run/pika-cloud 0755 pikaci users -"
    "d /run/pika-cloud/logs 0755 pikaci users -"
    "d /cargo-home 0755 pikaci users -"
    "d /cargo-target 0755 pikaci users -"
  ];

  environment.etc."pikaci-incus.README".text = readme;

  system.stateVersion = lib.mkDefault "24.11";
}
