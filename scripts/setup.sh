#!/usr/bin/env bash
# Installs what building and testing siklus needs on a fresh Debian machine
# that has the Rust toolchain, gcc, git and apt:
#   - libclang (RocksDB bindings), cmake (librdkafka), pkg-config;
#   - tansu 0.6.0, the Kafka-compatible broker the end-to-end tests start.
# Safe to run again: it skips what is already there.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

need_pkgs=()
for p in libclang-dev cmake pkg-config; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

TANSU_VERSION=0.6.0
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
  echo "setup: installing tansu $TANSU_VERSION (takes several minutes the first time)" >&2
  cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore
fi
echo "setup: done" >&2
