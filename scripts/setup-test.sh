#!/usr/bin/env bash
# Installs what the end-to-end tests and the bench need on top of the build
# (scripts/setup.sh, run first), on a fresh Debian machine with Java 17 and
# Maven:
#   - the Apache Kafka broker (KRaft) that scripts/kafka-broker.sh runs: its
#     jars from Maven Central (scripts/kafka/pom.xml) into
#     ~/.cache/siklus-kafka/<version>/libs;
#   - cargo-nextest, the test runner (one process per test, timeouts, the
#     test groups of .config/nextest.toml);
#   - for scripts/bench.py: Quix Streams (the peer it is compared with) and
#     confluent-kafka (its latency producer and consumer), from PyPI;
#   - for the cross-client Schema Registry tests (tests/python/sr_interop.py):
#     the modules confluent-kafka's Schema Registry client and Avro serdes
#     import.
# Safe to run again: it installs only what is missing, and says on stderr
# what it installs.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

# The build dependencies: the tests build the workspace.
"$root/scripts/setup.sh"

apt_install() {
  echo "setup-test: installing $*" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The broker is a JVM (Kafka 4 brokers need Java 17 or newer) assembled by
# Maven; util-linux's flock serialises the tests that share one broker.
need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v flock >/dev/null 2>&1 || need+=(util-linux)
if [ "${#need[@]}" -gt 0 ]; then apt_install "${need[@]}"; fi

# The Kafka broker's jars. The version is the one pinned in the pom; a new
# version goes to a directory of its own.
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$root/scripts/kafka/pom.xml")
libs="$HOME/.cache/siklus-kafka/$KAFKA_VERSION/libs"
if [ ! -f "$libs/kafka_2.13-$KAFKA_VERSION.jar" ]; then
  echo "setup-test: fetching the Apache Kafka $KAFKA_VERSION broker jars into $libs" >&2
  tmp="$libs.partial"
  rm -rf "$tmp"
  mkdir -p "$(dirname "$libs")"
  # Maven's own output only when it fails (its -q mode still prints
  # terminal colour codes).
  if ! mvn -q -B -f "$root/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$tmp" -DincludeScope=runtime >"$libs.mvn.log" 2>&1; then
    cat "$libs.mvn.log" >&2
    echo "setup-test: fetching the Kafka jars failed" >&2
    exit 1
  fi
  rm -f "$libs.mvn.log"
  rm -rf "$libs"
  mv "$tmp" "$libs"
fi

# The test runner.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup-test: installing cargo-nextest (a few minutes the first time)" >&2
  cargo install --locked cargo-nextest
fi

# Python and pip, for the bench and the Python Schema Registry tests.
need=()
if ! command -v python3 >/dev/null 2>&1; then
  need+=(python3 python3-pip)
elif ! python3 -m pip --version >/dev/null 2>&1; then
  need+=(python3-pip)
fi
if [ "${#need[@]}" -gt 0 ]; then apt_install "${need[@]}"; fi
pip_flags=(-q --disable-pip-version-check)
# A Debian python3 refuses system-wide installs (PEP 668) without this flag.
if python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
  pip_flags+=(--break-system-packages)
fi

# The bench's peer (Quix Streams, pinned: the bench compares with this
# release) and the Kafka client it brings, confluent-kafka.
QUIXSTREAMS_VERSION=3.28.1
if ! python3 -c "import quixstreams, confluent_kafka" >/dev/null 2>&1; then
  echo "setup-test: installing quixstreams $QUIXSTREAMS_VERSION (brings confluent-kafka)" >&2
  python3 -m pip install "${pip_flags[@]}" "quixstreams==$QUIXSTREAMS_VERSION"
  python3 -c "import quixstreams, confluent_kafka"
fi

# confluent-kafka's Schema Registry client and Avro serdes, for
# tests/python/sr_interop.py. Its [avro] extra is not used: it pins certifi
# to a release newer than some package mirrors carry. These are the modules
# SchemaRegistryClient, AvroSerializer and AvroDeserializer import.
if ! python3 -c 'import confluent_kafka.schema_registry.avro' >/dev/null 2>&1; then
  echo "setup-test: installing confluent-kafka's Avro / Schema Registry modules" >&2
  python3 -m pip install "${pip_flags[@]}" \
    confluent-kafka fastavro attrs cachetools certifi authlib httpx
  python3 -c 'import confluent_kafka.schema_registry.avro'
fi

echo "setup-test: done" >&2
