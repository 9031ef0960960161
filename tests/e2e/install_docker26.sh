#!/usr/bin/env bash
# Fetches Debian 13's Docker Engine 26.1 (docker.io, containerd, docker-cli), unpacked into
# ~/.cache/rexray-ci/docker26/root, for the E2E_ENGINE=26 runs of the end-to-end scripts (see
# ensure_docker in lib.sh); with E2E_ENGINE=28, Debian unstable's 28.5 into
# ~/.cache/rexray-ci/docker28/root. Once per machine; .ci/run calls it before the tests.
set -uo pipefail
export E2E_ENGINE=${E2E_ENGINE:-26}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
E2E_NAME=install_docker$E2E_ENGINE
E2E_TMP=$(mktemp -d /tmp/rexray-e2e-install-docker$E2E_ENGINE.XXXXXX)
_install_docker26
"$E2E_DOCKER26_ROOT/usr/sbin/dockerd" --version
rm -rf "$E2E_TMP"
