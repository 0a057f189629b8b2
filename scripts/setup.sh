#!/usr/bin/env bash
# Installs what *building* siklus needs on a fresh Debian machine that has the
# Rust toolchain, gcc and apt. That is all the demo needs; what the tests and
# the bench need on top is installed by scripts/setup-test.sh (run by .ci/run).
#
# Debian packages, each with its reason:
#   libclang-dev          bindgen generates the RocksDB bindings (rocksdb crate)
#   cmake                 librdkafka is built from source with cmake (rdkafka-sys)
#   pkg-config            rdkafka-sys and openssl-sys find system libraries with it
#   libssl-dev            librdkafka's TLS (SASL_SSL clusters) and the Schema Registry client
#   libcurl4-openssl-dev  librdkafka 2.12's sources include curl/curl.h even with curl off
#   zlib1g-dev            librdkafka's gzip codec (the libz feature)
#   g++, make             RocksDB's C++ sources, librdkafka's build
# Safe to run again: it installs only what is missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

BUILD_PKGS=(libclang-dev cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev g++ make)

missing=()
for p in "${BUILD_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing build packages: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is not on PATH; install Rust with rustup first (https://rustup.rs)" >&2
  exit 1
fi
echo "setup: build dependencies present" >&2
