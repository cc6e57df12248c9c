#!/usr/bin/env bash
# Makes sure the external tools the test suite talks to are installed: redis-cli and redis-benchmark
# (Debian package redis-tools). Installs them with apt-get when running as root (CI, containers); otherwise says
# exactly what to run. Called by `npm test` before the tests.
set -euo pipefail
missing=0
for tool in redis-cli redis-benchmark; do command -v "$tool" >/dev/null 2>&1 || missing=1; done
[ "$missing" = 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "lockstep tests need redis-cli and redis-benchmark: run 'sudo apt-get install -y redis-tools' first" >&2
  exit 1
fi
echo "installing redis-tools (redis-cli, redis-benchmark) for the tests..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools >/dev/null
