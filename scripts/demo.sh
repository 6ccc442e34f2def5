#!/usr/bin/env bash
# README command 1: prepares the machine (idempotent) and runs the demo.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup-host.sh"
exec node "$repo/dist/src/demo/lab-demo.js"
