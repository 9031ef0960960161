#!/usr/bin/env bash
# Real-Docker scenarios for the `ebs` backend against the EC2 emulator, with real block devices.
#
#     cargo test --test ebs_failover docker   # (as root, with CI=1 or REXRAY_E2E=1)
#
# Run by tests/ebs_failover.rs, which starts moto, makes the two instances (RunInstances) and runs
# the test "hypervisor" that backs attached volumes with loop devices linked into each instance's
# link directory; this script gets them through EBS_E2E_* variables. One Docker Engine plays both
# hosts: the plugin socket is served first by host A's daemon, then (after A is killed with
# SIGKILL) by host B's, each with its own instance ID, REXRAY_HOME and link directory.
set -uo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${EBS_E2E_ENDPOINT:?run this through: cargo test --test ebs_failover}"
: "${EBS_E2E_REGION:?}" "${EBS_E2E_AZ:?}" "${EBS_E2E_A:?}" "${EBS_E2E_LINKS_A:?}" "${EBS_E2E_B:?}" "${EBS_E2E_LINKS_B:?}"

DRIVER=rexray-ebs-e2e
V1=rxe2e-ebs-opts V2=rxe2e-ebs-implicit V3=rxe2e-ebs-db
# The hypervisor never gives this one a device (tests/e2e/ebs_support.rs: NO_DEVICE_PREFIX).
V4=rxe2e-nodevice-1
C1=rxe2e-ebs-c1

e2e_init ebs
ensure_docker
ensure_image "$E2E_IMAGE"
IMG=$E2E_IMAGE
track_container "$C1"
track_volume "$V1" "$V2" "$V3" "$V4"

# write_config FILE INSTANCE LINKS PREEMPT [STATUS_TIMEOUT]
write_config() {
    cat >"$1" <<EOF
rexray:
  logLevel: info
  modules:
    $DRIVER:
      type: docker
      host: unix:///run/docker/plugins/$DRIVER.sock
libstorage:
  service: ebs
  integration:
    volume:
      operations:
        mount:
          preempt: $4
ebs:
  endpoint: $EBS_E2E_ENDPOINT
  region: $EBS_E2E_REGION
  accessKey: test
  secretKey: test
  instanceID: $2
  availabilityZone: $EBS_E2E_AZ
  deviceLinksDir: $3
  statusTimeout: ${5:-60s}
EOF
}
write_config "$E2E_TMP/host-a.yml" "$EBS_E2E_A" "$EBS_E2E_LINKS_A" false
write_config "$E2E_TMP/host-b.yml" "$EBS_E2E_B" "$EBS_E2E_LINKS_B" false
write_config "$E2E_TMP/host-b-preempt.yml" "$EBS_E2E_B" "$EBS_E2E_LINKS_B" true
# REX-Ray's default statusTimeout: as long as Docker's own Mount timeout.
write_config "$E2E_TMP/host-a-default.yml" "$EBS_E2E_A" "$EBS_E2E_LINKS_A" false 2m

# ec2 NAME: the emulator's DescribeVolumes answer for Name tag NAME, whitespace removed (an
# unsigned Query API call; moto routes it by the credential scope and checks no signature).
ec2() {
    curl -sS --max-time 20 -X POST "$EBS_E2E_ENDPOINT/" \
        -H "Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/$EBS_E2E_REGION/ec2/aws4_request, SignedHeaders=host, Signature=0" \
        -H 'X-Amz-Date: 20260101T000000Z' \
        --data-urlencode 'Action=DescribeVolumes' --data-urlencode 'Version=2016-11-15' \
        --data-urlencode 'Filter.1.Name=tag:Name' --data-urlencode "Filter.1.Value.1=$1" | tr -d ' \n\r\t'
}

# attached_to NAME: the instance NAME is attached to (empty when detached).
attached_to() { ec2 "$1" | sed -n 's:.*<attachmentSet><item>.*<instanceId>\([^<]*\)</instanceId>.*:\1:p'; }

E2E_REXRAY_HOME=$E2E_TMP/home-a
start_daemon "$DRIVER" "$E2E_TMP/host-a.yml"
e2e_preclean

step "create with options: the emulator holds the tags, size and type; scope global"
assert_ok docker volume create -d "$DRIVER" -o size=2 -o volumeType=gp2 -o fsType=ext4 -o tags='team=qa;env=e2e' "$V1"
X=$(ec2 "$V1")
assert_contains "$X" "<size>2</size>" "EC2 size"
assert_contains "$X" "<volumeType>gp2</volumeType>" "EC2 volume type"
assert_contains "$X" "<availabilityZone>$EBS_E2E_AZ</availabilityZone>" "EC2 AZ"
assert_contains "$X" "<key>team</key><value>qa</value>" "EC2 user tag"
assert_contains "$X" "<key>rexray-rs/managed</key><value>true</value>" "EC2 ownership tag"
assert_contains "$X" "<key>rexray-rs/fsType</key><value>ext4</value>" "EC2 fsType tag"
assert_ok docker volume inspect --format '{{.Scope}}' "$V1"
assert_eq "$OUT" "global" "inspect .Scope"
assert_ok vol_status "$V1"
assert_contains "$OUT" '"volumeType":"gp2"' "Status"
assert_contains "$OUT" '"sizeGiB":2' "Status"
assert_ok docker volume rm "$V1"
assert_not_contains "$(ec2 "$V1")" "<volumeId>" "EC2 after docker volume rm"

step "implicit create: a 16 GiB gp3 volume, detached in EC2 once the container exits"
assert_ok docker run --rm --volume-driver "$DRIVER" -v "$V2:/data" "$IMG" sh -c 'echo hi > /data/f && sync && df -k /data | tail -n 1'
kib=$(awk '{print $2}' <<<"$OUT")
check "df shows about 16 GiB ($kib KiB)" test "${kib:-0}" -gt 16000000 -a "${kib:-0}" -le 16777216
X=$(ec2 "$V2")
assert_contains "$X" "<size>16</size>" "EC2 size of the implicit volume"
assert_contains "$X" "<volumeType>gp3</volumeType>" "EC2 type of the implicit volume"
assert_eq "$(attached_to "$V2")" "" "attachment after the container exited"
assert_ok docker run --rm -v "$V2:/data" "$IMG" cat /data/f
assert_eq "$OUT" "hi" "the data outlives the container"
assert_ok docker volume rm "$V2"

step "host A writes, syncs, and dies (kill -9) with the volume attached"
assert_ok docker volume create -d "$DRIVER" -o size=1 "$V3"
assert_ok docker run -d --name "$C1" -v "$V3:/data" "$IMG" sh -c \
    'dd if=/dev/urandom of=/data/payload bs=1024 count=4096 2>/dev/null && sha256sum /data/payload > /data/sum.new && mv /data/sum.new /data/sum && sync && sleep 600'
retry 60 docker exec "$C1" cat /data/sum
SUM_A=$(cut -d' ' -f1 <<<"$OUT")
check "host A wrote a checksum ($SUM_A)" test "${#SUM_A}" -eq 64
assert_eq "$(attached_to "$V3")" "$EBS_E2E_A" "EC2 attachment while A runs"
kill9_daemon

step "host B without preemption: the mount is refused, naming host A's instance"
E2E_REXRAY_HOME=$E2E_TMP/home-b
start_daemon "$DRIVER" "$E2E_TMP/host-b.yml"
assert_ok docker rm -f "$C1"
assert_fails docker run --rm --volume-driver "$DRIVER" -v "$V3:/data" "$IMG" cat /data/sum
assert_contains "$ERR" "$EBS_E2E_A" "docker's error"
assert_contains "$ERR" "preempt" "docker's error"
assert_eq "$(attached_to "$V3")" "$EBS_E2E_A" "EC2 attachment after the refusal"
stop_daemon

step "host B with preemption: takes the volume over and reads exactly what A wrote"
start_daemon "$DRIVER" "$E2E_TMP/host-b-preempt.yml"
assert_ok docker run --rm --volume-driver "$DRIVER" -v "$V3:/data" "$IMG" sh -c 'sha256sum /data/payload | cut -d" " -f1; cut -d" " -f1 /data/sum'
assert_eq "$OUT" "$SUM_A"$'\n'"$SUM_A" "checksum on B (computed, and as A recorded it)"
assert_eq "$(attached_to "$V3")" "" "EC2 attachment after B's container exited"
assert_ok vol_status "$V3"
assert_contains "$OUT" '"state":"available"' "Status on B"
assert_ok docker volume rm "$V3"
assert_not_contains "$(ec2 "$V3")" "<volumeId>" "EC2 after docker volume rm"
stop_daemon

step "a device that never appears: Docker gets our message inside its 2 min, and the volume is detached"
E2E_REXRAY_HOME=$E2E_TMP/home-a
start_daemon "$DRIVER" "$E2E_TMP/host-a-default.yml"
assert_ok docker volume create -d "$DRIVER" -o size=1 "$V4"
started=$SECONDS
assert_fails docker run --rm -v "$V4:/data" "$IMG" true
took=$((SECONDS - started))
check "docker run failed after ${took}s, before Docker's 120 s" test "$took" -lt 110
assert_contains "$ERR" "no device appeared for volume $V4" "docker's error"
assert_contains "$ERR" "Docker's 2 min Mount timeout" "docker's error"
assert_not_contains "$ERR" "context deadline exceeded" "docker's error"
assert_eq "$(attached_to "$V4")" "" "EC2 attachment after the failed mount"
assert_ok vol_status "$V4"
assert_contains "$OUT" '"state":"available"' "Status after the rollback"
assert_ok docker volume rm "$V4"
E2E_VOLUMES_CLEAN=1
stop_daemon
