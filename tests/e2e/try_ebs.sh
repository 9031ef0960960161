#!/usr/bin/env bash
# The README's "Try EBS without AWS", steps 2–5, run as written: the block between its
# `<!-- try-ebs -->` markers, minus step 1 (installing and starting moto: the test's moto at
# TRY_EBS_ENDPOINT stands in), with the test image for `busybox`, this build's binary for
# ./target/release/rexray and temporary directories for /var/tmp and /run/rexray-try.
#
#     cargo test --test ebs_failover readme   # (as root, with CI=1 or REXRAY_E2E=1)
set -uo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${TRY_EBS_ENDPOINT:?run this through: cargo test --test ebs_failover readme}"

e2e_init try_ebs
ensure_docker
ensure_image "$E2E_IMAGE"
track_volume try1
track_container try-app

step "the README's steps, extracted"
steps=$E2E_TMP/steps.sh
{
    echo "set -euo pipefail"
    echo "EC2=$TRY_EBS_ENDPOINT"
    # Step 1 is dropped, so is the `kill $moto` that ends step 5.
    sed -n '/^<!-- try-ebs -->$/,/^<!-- \/try-ebs -->$/p' "$E2E_ROOT/README.md" |
        sed '1,2d;$d' | sed '$d' |
        sed '/^# 1\./,/^# 2\./{/^# 2\./!d}' |
        sed -e 's/; kill \$moto$//' \
            -e "s| busybox | $E2E_IMAGE |" \
            -e "s|\./target/release/rexray|$REXRAY_BIN|g" \
            -e "s|/var/tmp/|$E2E_TMP/var/|g" \
            -e "s|/run/rexray-try|$E2E_TMP/run|g"
} >"$steps"
mkdir -p "$E2E_TMP/var"
check "step 2 is there" grep -q 'tools/ebs_test_host.py --endpoint \$EC2 serve' "$steps"
check "step 4 is there" grep -q "docker volume create -d rexray-ebs" "$steps"
check "step 5 is there" grep -q '^kill \$daemon; wait \$daemon; kill \$host; wait \$host$' "$steps"
check "step 1 is not" bash -c "! grep -q moto_server '$steps'"

step "run as one script, from the repository root"
out=$E2E_TMP/steps.out
(cd "$E2E_ROOT" && timeout 300 bash "$steps") >"$out" 2>&1
rc=$?
sed 's/^/    | /' "$out"
assert_eq "$rc" 0 "the steps' exit status"
assert_contains "$(cat "$out")" "hello" "the greeting read back"
assert_match "$(cat "$out")" "try1 .*vol-[0-9a-f]+.*us-east-1a" "volume ls: the EC2 volume ID and zone"
assert_match "$(cat "$out")" "try1 .*vol-[0-9a-f]+.*2 GiB" "volume resize: the new size"
grown=$(awk '$NF == "/data" {print $2}' "$out" | tail -n 1)
check "df in the running container after the resize: $grown KiB" test "${grown:-0}" -gt 1900000
check "the daemon's socket is gone" test ! -e /run/docker/plugins/rexray-ebs.sock
assert_eq "$(losetup -n -O NAME,BACK-FILE | grep -c "$E2E_TMP/var/rexray-try/images")" 0 "loop devices left"
check "the device host logged no error" bash -c "! grep -q '^error' '$E2E_TMP/var/ebs_test_host.log'"
check "the daemon logged no error" bash -c "! grep -q ' ERROR ' '$E2E_TMP/var/rexray-try.log'"
