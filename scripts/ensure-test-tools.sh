#!/usr/bin/env bash
# Makes sure the external tools the test suite talks to are installed: redis-cli and redis-benchmark
# (Debian package redis-tools), and redis-server (package redis-server: the cache backing store test runs one). Installs them with apt-get when running as root (CI, containers); otherwise says
# exactly what to run. Called by `npm test` before the tests.
set -euo pipefail
missing=0
for tool in redis-cli redis-benchmark redis-server; do command -v "$tool" >/dev/null 2>&1 || missing=1; done
[ "$missing" = 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "lockstep tests need redis-cli, redis-benchmark and redis-server: run 'sudo apt-get install -y redis-tools redis-server' first" >&2
  exit 1
fi
echo "installing redis-tools and redis-server for the tests..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools redis-server >/dev/null
