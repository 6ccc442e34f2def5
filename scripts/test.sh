#!/usr/bin/env bash
# README command 2 (and what CI runs): prepares the machine (idempotent),
# checks types, lint and formatting, then runs every test tier with each
# file's duration printed. Long matrices and soaks: `npm run test:full`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup-host.sh"
cd "$repo"
npm run -s check
npm test
