#!/usr/bin/env bash
# Builds the rexray managed Docker plugin (plugin/config.json + rootfs/) without pulling any
# image, and optionally creates it with `docker plugin create`.
#
#     plugin/build.sh [--bin PATH] [--out DIR] [--config FILE] [--from-image IMAGE]
#                     [--create NAME] [--force]
#
#   --bin PATH          the daemon binary (default: target/release/rexray; build it with
#                       `cargo build --release`)
#   --out DIR           where config.json and rootfs/ are written (default: target/plugin);
#                       DIR/rootfs is replaced
#   --config FILE       a rexray.yml baked in as /etc/rexray/rexray.yml (default: none; the
#                       plugin is configured through its environment, see config.json)
#   --from-image IMAGE  take the rootfs from IMAGE (built from the Dockerfile) instead of
#                       assembling it from this machine's tools
#   --csi               a CSI plugin for Docker Swarm cluster volumes instead of a VolumeDriver
#                       one: interface types docker.csicontroller/1.0 and docker.csinode/1.0 on
#                       csi.sock (CSI_ENDPOINT), propagatedMount /data/published (Swarm's publish
#                       targets); the same environment settings, plus CSI_MODE
#   --create NAME       then run `docker plugin create NAME DIR` (the plugin starts disabled:
#                       `docker plugin set NAME KEY=VALUE…` then `docker plugin enable NAME`)
#   --force             with --create: remove an existing plugin NAME first
#
# The assembled rootfs holds the binary plus the tools it runs (mkfs.ext4, mkfs.xfs, blkid,
# e2fsck, resize2fs, xfs_growfs, and losetup, mount, umount, nvme for operators) with the
# libraries `ldd` lists for each, /etc/mke2fs.conf, the CA certificates, and the directories
# Docker requires (/run/docker/plugins). As root, each program is then run once in a chroot of
# the rootfs to prove nothing is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$ROOT/target/release/rexray
out=$ROOT/target/plugin
config=""
image=""
create=""
force=0
csi=0

die() {
    echo "plugin/build.sh: $*" >&2
    exit 1
}

while (($#)); do
    case $1 in
    --bin) bin=${2:?--bin needs a path}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --config) config=${2:?--config needs a file}; shift 2 ;;
    --from-image) image=${2:?--from-image needs an image}; shift 2 ;;
    --create) create=${2:?--create needs a plugin name}; shift 2 ;;
    --force) force=1; shift ;;
    --csi) csi=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
rootfs=$out/rootfs
mkdir -p "$out"
rm -rf "$rootfs"
mkdir -p "$rootfs"

# copy_file SRC: copies SRC (following links) to the same path in the rootfs, with its
# directory resolved the way the rootfs resolves it (/lib → usr/lib, as on merged-/usr Debian).
copy_file() {
    local src=$1 dir dest
    dir=$(readlink -f "$(dirname "$src")")
    dest=$rootfs$dir/$(basename "$src")
    [[ -e $dest ]] && return 0
    mkdir -p "$rootfs$dir"
    cp -L --preserve=mode "$src" "$dest"
}

# copy_program PATH: the program and every library `ldd` lists for it.
copy_program() {
    local prog=$1 lib
    copy_file "$prog"
    while read -r lib; do
        [[ -n $lib ]] && copy_file "$lib"
    done < <(ldd "$prog" 2>/dev/null | awk '/=> \//{print $3} /^\t\//{print $1}')
}

if [[ -n $image ]]; then
    command -v docker >/dev/null || die "--from-image needs the docker CLI"
    echo "rootfs: exporting image $image"
    cid=$(docker create "$image" /usr/bin/rexray version) || die "docker create $image failed"
    if ! docker export "$cid" | tar -x -C "$rootfs"; then
        docker rm -f "$cid" >/dev/null 2>&1
        die "docker export of $image failed"
    fi
    docker rm -f "$cid" >/dev/null
    [[ -x $rootfs/usr/bin/rexray ]] || die "image $image has no /usr/bin/rexray"
else
    [[ -x $bin ]] || die "no daemon binary at $bin (cargo build --release, or pass --bin)"
    echo "rootfs: assembling from $bin and this machine's tools"
    # The merged-/usr layout of Debian 12, so that library paths from ldd resolve inside.
    mkdir -p "$rootfs"/usr/{bin,sbin,lib,lib64}
    for d in bin sbin lib lib64; do ln -s "usr/$d" "$rootfs/$d"; done
    install -m 0755 "$bin" "$rootfs/usr/bin/rexray"
    while read -r lib; do
        [[ -n $lib ]] && copy_file "$lib"
    done < <(ldd "$bin" 2>/dev/null | awk '/=> \//{print $3} /^\t\//{print $1}')
    required=(mkfs.ext4 mkfs.xfs blkid e2fsck resize2fs xfs_growfs losetup mount umount)
    optional=(nvme)
    for tool in "${required[@]}"; do
        path=$(command -v "$tool") || die "$tool is not installed (Debian: e2fsprogs, xfsprogs, util-linux, mount)"
        copy_program "$path"
    done
    for tool in "${optional[@]}"; do
        if path=$(command -v "$tool"); then
            copy_program "$path"
        else
            echo "rootfs: $tool not found (Debian: nvme-cli); EBS on NVMe instances resolves devices without it"
        fi
    done
    [[ -f /etc/mke2fs.conf ]] && copy_file /etc/mke2fs.conf
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        copy_file /etc/ssl/certs/ca-certificates.crt
    else
        echo "rootfs: no /etc/ssl/certs/ca-certificates.crt (Debian: ca-certificates); EBS needs it for HTTPS"
    fi
    printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\n' >"$rootfs/etc/group"
fi

# What Docker requires (/run/docker/plugins) and where the daemon keeps its files.
mkdir -p "$rootfs"/{run/docker/plugins,var/lib/rexray,etc/rexray,dev,proc,sys,tmp}
chmod 1777 "$rootfs/tmp"
[[ -e $rootfs/var/run ]] || ln -s ../run "$rootfs/var/run"
if [[ -n $config ]]; then
    install -m 0600 "$config" "$rootfs/etc/rexray/rexray.yml"
fi
if ((csi)); then
    # Swarm stages under /data/staged and publishes under /data/published (hard-coded there).
    mkdir -p "$rootfs"/data/{staged,published}
    python3 - "$ROOT/plugin/config.json" "$out/config.json" <<'PY_CSI'
import json, sys
config = json.load(open(sys.argv[1]))
config["description"] = "rexray: persistent volumes for Docker Swarm cluster volumes (CSI)"
config["interface"] = {"types": ["docker.csicontroller/1.0", "docker.csinode/1.0"], "socket": "csi.sock"}
config["propagatedMount"] = "/data/published"
config["env"] = [
    {"name": "CSI_ENDPOINT", "description": "The CSI socket (Docker's interface socket)", "value": "/run/docker/plugins/csi.sock"},
    {"name": "CSI_MODE", "description": "CSI services: both, controller or node", "settable": ["value"], "value": "both"},
] + [e for e in config["env"] if e["name"] not in ("CSI_ENDPOINT", "CSI_MODE")]
json.dump(config, open(sys.argv[2], "w"), indent=2)
PY_CSI
else
    cp "$ROOT/plugin/config.json" "$out/config.json"
fi

if [[ $(id -u) == 0 ]] && command -v chroot >/dev/null; then
    checks=("/usr/bin/rexray version" "mkfs.ext4 -V" "mkfs.xfs -V" "blkid -V" "e2fsck -V" "resize2fs -P /dev/null" "xfs_growfs -V" "losetup --version")
    for c in "${checks[@]}"; do
        # resize2fs has no version flag: -P on /dev/null fails after loading every library.
        # shellcheck disable=SC2086 # $c is a command line
        if ! msg=$(chroot "$rootfs" $c 2>&1) &&
            [[ $msg == *"error while loading shared libraries"* || $msg == *"No such file"* ]]; then
            die "in the rootfs, '$c' fails: $msg"
        fi
    done
    echo "rootfs: every program runs in a chroot of the rootfs"
fi
if ! "$rootfs/usr/bin/rexray" version 2>/dev/null | grep -q '^Backends:.*ebs'; then
    echo "note: this binary has no ebs backend: set LIBSTORAGE_SERVICE=loop or vfs before enabling the plugin"
fi
echo "plugin: $out (config.json, rootfs/: $(du -sh "$rootfs" | cut -f1))"

if [[ -n $create ]]; then
    if docker plugin inspect "$create" >/dev/null 2>&1; then
        ((force)) || die "plugin $create exists; remove it (docker plugin rm -f $create) or pass --force"
        docker plugin rm -f "$create" >/dev/null
    fi
    docker plugin create "$create" "$out" >/dev/null || die "docker plugin create $create $out failed"
    echo "created plugin $create (disabled): docker plugin set $create LIBSTORAGE_SERVICE=…; docker plugin enable $create"
fi
