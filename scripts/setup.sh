#!/usr/bin/env bash
# Installs what building and testing siklus needs on a fresh Debian machine
# that has the Rust toolchain, gcc, git and apt:
#   - libclang (RocksDB bindings), cmake (librdkafka), pkg-config;
#   - tansu 0.6.0, the Kafka-compatible broker the end-to-end tests start;
#   - for scripts/bench.py: Quix Streams (the peer it is compared with) and
#     confluent-kafka (its latency producer and consumer), from PyPI;
#   - for the cross-client Schema Registry tests (tests/python/sr_interop.py):
#     the modules confluent-kafka's Schema Registry client and Avro serdes import.
# Safe to run again: it skips what is already there.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

need_pkgs=()
for p in libclang-dev cmake pkg-config; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if ! command -v python3 >/dev/null 2>&1; then
  need_pkgs+=(python3 python3-pip)
elif ! python3 -m pip --version >/dev/null 2>&1; then
  need_pkgs+=(python3-pip)
fi
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
# Python packages of the benchmark, into the python3 that runs it.
QUIXSTREAMS_VERSION=3.28.1
if ! python3 -c "import quixstreams, confluent_kafka" >/dev/null 2>&1; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "setup: installing python3-pip" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pip >/dev/null
  fi
  echo "setup: installing quixstreams $QUIXSTREAMS_VERSION (brings confluent-kafka)" >&2
  pip_args=(install --quiet --disable-pip-version-check "quixstreams==$QUIXSTREAMS_VERSION")
  # A Debian python3 refuses system-wide installs (PEP 668) without this flag.
  if python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
    pip_args+=(--break-system-packages)
  fi
  python3 -m pip "${pip_args[@]}"
  python3 -c "import quixstreams, confluent_kafka"
fi
# confluent-kafka's [avro] extra is not used: it pins certifi to a release
# newer than some package mirrors carry. These are the modules its
# SchemaRegistryClient, AvroSerializer and AvroDeserializer import.
if ! python3 -c 'import confluent_kafka.schema_registry.avro' >/dev/null 2>&1; then
  echo "setup: installing confluent-kafka and its Avro / Schema Registry modules" >&2
  pip_flags=(-q)
  stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
  if [ -e "$stdlib/EXTERNALLY-MANAGED" ]; then pip_flags+=(--break-system-packages); fi
  python3 -m pip install "${pip_flags[@]}" \
    confluent-kafka fastavro attrs cachetools certifi authlib httpx
  python3 -c 'import confluent_kafka.schema_registry.avro'
fi
echo "setup: done" >&2
