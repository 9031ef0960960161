#!/usr/bin/env bash
# The Dockerfile builds offline, from a base made here (root; see lib.sh):
#
#   debootstrap makes a Debian 12 minbase with e2fsprogs, xfsprogs, util-linux, nvme-cli and
#   ca-certificates from this machine's Debian mirror, `docker import` turns it into the image
#   rexray-base:bookworm (kept for later runs), and `docker build --build-arg BASE=…` builds the
#   Dockerfile with the classic builder. The image has the binary and the tools, and its
#   filesystem works as a managed plugin's rootfs (plugin/build.sh --from-image) that serves a
#   container.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/plugin_lib.sh"

e2e_init dockerfile
ensure_docker
ensure_image "$E2E_IMAGE"

BASE=${E2E_BASE_IMAGE:-rexray-base:bookworm}  # kept across runs; E2E_BASE_IMAGE picks another
IMG=rexray-e2e-image:latest
P=rexray-img
V=rexray-e2e-imgvol
track_volume "$V"

# The Debian mirror apt uses here (deb822 sources first, then sources.list).
debian_mirror() {
    local m
    m=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null)
    [[ -z $m ]] && m=$(awk '$1 == "deb" && $2 ~ /^http/ && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    printf '%s\n' "${m:-http://deb.debian.org/debian}"
}

step "a Debian base made offline: debootstrap + docker import"
if docker image inspect "$BASE" >/dev/null 2>&1; then
    pass "$BASE exists (made by an earlier run)"
else
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    mirror=$(debian_mirror)
    t0=$SECONDS
    assert_ok debootstrap --variant=minbase --include=e2fsprogs,xfsprogs,util-linux,nvme-cli,ca-certificates \
        bookworm "$E2E_TMP/base" "$mirror"
    ((RC == 0)) || e2e_die "debootstrap from $mirror failed: $(_oneline "$(tail -n 5 "$E2E_TMP/base/debootstrap/debootstrap.log" 2>/dev/null)")"
    rm -rf "$E2E_TMP/base/var/cache/apt/archives"/*.deb "$E2E_TMP/base/var/lib/apt/lists"/*
    run bash -c "tar -C '$E2E_TMP/base' -c . | $E2E_DOCKER_BIN import - '$BASE'"
    if ((RC == 0)); then pass "$BASE imported ($((SECONDS - t0)) s from $mirror)"; else e2e_die "docker import: $ERR"; fi
    rm -rf "$E2E_TMP/base"
fi

step "docker build with the base as a build argument"
bin=$(plugin_bin) || e2e_die "no release binary; run cargo build --release first"
if [[ $bin == "$E2E_ROOT/target/release/rexray" ]]; then
    context=$E2E_ROOT
else
    context=$E2E_TMP/context
    mkdir -p "$context/target/release"
    cp "$bin" "$context/target/release/rexray"
    cp "$E2E_ROOT/Dockerfile" "$E2E_ROOT/.dockerignore" "$context/"
fi
t0=$SECONDS
assert_ok timeout -k 5 600 env DOCKER_BUILDKIT=0 "$E2E_DOCKER_BIN" build --build-arg "BASE=$BASE" -t "$IMG" -f "$E2E_ROOT/Dockerfile" "$context"
((RC == 0)) || e2e_die "docker build failed: $(_oneline "$OUT $ERR")"
pass "built $IMG in $((SECONDS - t0)) s"
assert_match "$OUT" "Sending build context to Docker daemon +[0-9.]+(kB|MB)" "the build context (.dockerignore keeps target/ out)"

step "the image has the daemon and the tools"
assert_ok docker run --rm "$IMG" version
assert_contains "$OUT" "rexray " "rexray version"
assert_ok docker run --rm --entrypoint sh "$IMG" -c \
    'mkfs.ext4 -V 2>&1 | head -n 1; mkfs.xfs -V; blkid -V; losetup --version; nvme version; test -s /etc/ssl/certs/ca-certificates.crt && echo certs; test -d /run/docker/plugins && echo plugins-dir'
for want in mke2fs "mkfs.xfs version" blkid losetup "nvme version" certs plugins-dir; do
    assert_contains "$OUT" "$want" "tools in the image"
done

step "the image's filesystem as a managed plugin's rootfs"
plugin_create "$P" --from-image "$IMG"
assert_ok docker plugin set "$P" LIBSTORAGE_SERVICE=loop
plugin_enable "$P"
e2e_preclean
assert_ok docker volume create -d "$P" -o size=1 -o fsType=xfs "$V"
assert_ok docker run --rm -v "$V:/data" "$E2E_IMAGE" sh -c 'echo from-image > /data/f && sync'
assert_ok docker run --rm -v "$V:/data" "$E2E_IMAGE" cat /data/f
assert_eq "$OUT" from-image "data written and read through the image-based plugin"
assert_ok docker volume rm "$V"
E2E_VOLUMES_CLEAN=1
plugin_remove "$P"
E2E_PLUGIN=""
docker rmi "$IMG" >/dev/null 2>&1
