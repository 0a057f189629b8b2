#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, one combined broker and
# controller) for the end-to-end tests and the bench, run from the jars that
# scripts/setup-test.sh puts in ~/.cache/siklus-kafka/<version>/libs.
#
#   scripts/kafka-broker.sh start DIR [PORT]
#       Formats a KRaft storage in DIR (once), starts the broker in the
#       background, waits until it serves clients and prints 127.0.0.1:PORT.
#       Without PORT, free loopback ports are chosen for the client and the
#       controller listeners. DIR keeps the config (with both ports), the data
#       (DIR/data), the log (DIR/broker.log) and the pid (DIR/broker.pid), so
#       `start` on a DIR used before brings the same broker back on the same
#       port with its data. `start` on a DIR whose broker is running only
#       prints its address.
#   scripts/kafka-broker.sh stop DIR
#       SIGTERM, then SIGKILL if it has not exited after
#       KAFKA_BROKER_STOP_TIMEOUT seconds (30).
#
# Environment, all optional:
#   KAFKA_BROKER_WATCH_PID   a watchdog stops the broker when this process is
#                            gone (a test process, whose statics are never
#                            dropped, or the test runner);
#   KAFKA_BROKER_REMOVE_DIR  1: the watchdog then also removes DIR;
#   KAFKA_BROKER_USER_PID    registers a user of the broker (in DIR/users);
#   KAFKA_BROKER_IDLE_STOP   seconds: the watchdog stops the broker once no
#                            registered user has been alive that long (the
#                            next `start` brings it back);
#   KAFKA_HEAP_OPTS          JVM heap (-Xmx512m -Xms128m);
#   KAFKA_BROKER_START_TIMEOUT  seconds to wait for readiness (120);
#   SIKLUS_KAFKA_LIBS        the jar directory, instead of the cache.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")
LIBS=${SIKLUS_KAFKA_LIBS:-$HOME/.cache/siklus-kafka/$KAFKA_VERSION/libs}
JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java

die() {
  echo "kafka-broker: $*" >&2
  exit 1
}

usage() {
  die "usage: $0 start DIR [PORT] | stop DIR"
}

# Whether the pid in DIR/broker.pid is a live Kafka broker (not a reused pid).
broker_pid() {
  local pid
  pid=$(cat "$DIR/broker.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' || return 1
  echo "$pid"
}

accepts() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A loopback port nobody listens on, below the kernel's ephemeral range
# (32768-60999), so that no outgoing connection holds it when the broker
# comes back on it after a restart.
pick_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 12000))
    if ! accepts "$p" && [ "$p" != "${1:-}" ]; then
      echo "$p"
      return
    fi
  done
  die "no free loopback port found"
}

write_config() {
  local port=$1 cport=$2
  cat >"$DIR/server.properties" <<EOF
# Written by scripts/kafka-broker.sh. port=$port controller_port=$cport
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DIR/data
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# A group's first rebalance does not wait for more members (default 3 s).
group.initial.rebalance.delay.ms=0
# siklus creates its topics; a typo must not create one silently.
auto.create.topics.enable=false
num.partitions=1
# Small: a 2-core machine that also runs the processors under test.
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
EOF
}

write_log_config() {
  cat >"$DIR/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
# The config dumps (hundreds of lines per client and server) say nothing new.
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
EOF
}

# The watchdog: one per DIR (DIR/watchdog.pid), for as long as
# KAFKA_BROKER_WATCH_PID lives, in a session of its own. Runs with the lock
# fd closed; takes the lock to stop the broker.
watchdog() {
  local watch=$1 idle=${KAFKA_BROKER_IDLE_STOP:-} remove=${KAFKA_BROKER_REMOVE_DIR:-}
  local unused=0 pid f live
  while [ -d "$DIR" ]; do
    if ! kill -0 "$watch" 2>/dev/null; then
      exec 9>>"$DIR/lock"
      flock 9
      if pid=$(broker_pid); then stop_pid "$pid"; fi
      if [ "$remove" = 1 ]; then rm -rf "$DIR"; else rm -f "$DIR/watchdog.pid"; fi
      exit 0
    fi
    if [ -n "$idle" ] && broker_pid >/dev/null; then
      live=0
      for f in "$DIR"/users/*; do
        [ -e "$f" ] || continue
        if kill -0 "${f##*/}" 2>/dev/null; then live=1; else rm -f "$f"; fi
      done
      if [ "$live" = 1 ]; then unused=0; else unused=$((unused + 1)); fi
      if [ "$unused" -ge "$idle" ]; then
        (
          exec 9>>"$DIR/lock"
          flock 9
          # A user may have registered while the lock was held by `start`.
          for f in "$DIR"/users/*; do
            [ -e "$f" ] && kill -0 "${f##*/}" 2>/dev/null && exit 0
          done
          if pid=$(broker_pid); then stop_pid "$pid"; fi
        )
        unused=0
      fi
    fi
    sleep 1
  done
}

stop_pid() {
  local pid=$1 timeout=${KAFKA_BROKER_STOP_TIMEOUT:-30} i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < timeout * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "kafka-broker: pid $pid still running ${timeout}s after SIGTERM, killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

# Starts the JVM on the config in DIR; prints nothing. Returns 2 when a port
# was taken (the caller may pick others), 1 on any other failure.
launch() {
  local port=$1 from pid deadline
  from=$(($(wc -l 2>/dev/null <"$DIR/broker.log" || echo 0) + 1))
  # shellcheck disable=SC2086
  # A session of its own, like the watchdog: a test runner that kills the
  # process group of a test that timed out must not take down a broker
  # that other tests share (the watchdog decides when it goes).
  setsid "$JAVA" ${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m} -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$DIR/log4j2.properties" \
    -cp "$LIBS/*" kafka.Kafka "$DIR/server.properties" \
    </dev/null >>"$DIR/broker.log" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$DIR/broker.pid"
  deadline=$((SECONDS + ${KAFKA_BROKER_START_TIMEOUT:-120}))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" 2>/dev/null || true
      rm -f "$DIR/broker.pid"
      if tail -n +"$from" "$DIR/broker.log" | grep -q 'Address already in use'; then return 2; fi
      echo "kafka-broker: the broker exited during start; the end of $DIR/broker.log:" >&2
      tail -n +"$from" "$DIR/broker.log" | tail -n 30 >&2
      return 1
    fi
    # Ready: the server says it started (after the controller is elected,
    # the broker registered and unfenced, its listeners open) and the client
    # port accepts.
    if tail -n +"$from" "$DIR/broker.log" | grep -q 'Kafka Server started' && accepts "$port"; then
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "kafka-broker: not ready after ${KAFKA_BROKER_START_TIMEOUT:-120}s; the end of $DIR/broker.log:" >&2
      tail -n +"$from" "$DIR/broker.log" | tail -n 30 >&2
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$DIR/broker.pid"
      return 1
    fi
    sleep 0.2
  done
}

cmd_start() {
  local want_port=${1:-} port cport tries=1 rc pid wpid
  [ -f "$LIBS/kafka_2.13-$KAFKA_VERSION.jar" ] ||
    die "the Kafka $KAFKA_VERSION jars are missing from $LIBS: run scripts/setup-test.sh"
  command -v "$JAVA" >/dev/null || die "no java on PATH (Java 17 or newer): run scripts/setup-test.sh"
  mkdir -p "$DIR/users"
  DIR=$(cd "$DIR" && pwd)
  exec 9>>"$DIR/lock"
  flock 9
  if [ -n "${KAFKA_BROKER_USER_PID:-}" ]; then : >"$DIR/users/$KAFKA_BROKER_USER_PID"; fi
  if [ -f "$DIR/server.properties" ]; then
    port=$(sed -n 's/^# Written by .* port=\([0-9]*\) .*/\1/p' "$DIR/server.properties")
    [ -z "$want_port" ] || [ "$want_port" = "$port" ] ||
      die "$DIR already holds a broker on port $port, not $want_port"
  else
    port=${want_port:-$(pick_port)}
    cport=$(pick_port "$port")
    write_config "$port" "$cport"
    tries=5
    [ -z "$want_port" ] || tries=1
  fi
  if pid=$(broker_pid) && accepts "$port"; then
    echo "127.0.0.1:$port"
    return 0
  fi
  write_log_config
  if [ ! -f "$DIR/data/meta.properties" ]; then
    # The cluster id is 16 random bytes in URL-safe base64, as
    # `kafka-storage random-uuid` makes it.
    local cid
    # An id that starts with '-' would be read as an option: draw again.
    cid=-
    while [ "${cid#-}" != "$cid" ]; do
      cid=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    done
    "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
      -Dlog4j2.configurationFile="$DIR/log4j2.properties" -cp "$LIBS/*" \
      kafka.tools.StorageTool format -t "$cid" -c "$DIR/server.properties" \
      </dev/null >>"$DIR/format.log" 2>&1 9>&- ||
      { cat "$DIR/format.log" >&2; die "formatting the storage in $DIR failed"; }
  fi
  while :; do
    rc=0
    launch "$port" || rc=$?
    [ "$rc" = 0 ] && break
    tries=$((tries - 1))
    if [ "$rc" = 2 ] && [ "$tries" -gt 0 ]; then
      port=$(pick_port)
      cport=$(pick_port "$port")
      write_config "$port" "$cport"
      continue
    fi
    [ "$rc" = 2 ] && die "port $port or the controller port is taken; see $DIR/broker.log"
    die "the broker did not start; see $DIR/broker.log"
  done
  if [ -n "${KAFKA_BROKER_WATCH_PID:-}" ]; then
    wpid=$(cat "$DIR/watchdog.pid" 2>/dev/null || true)
    if [ -z "$wpid" ] || ! kill -0 "$wpid" 2>/dev/null; then
      setsid bash "${BASH_SOURCE[0]}" watchdog "$DIR" "$KAFKA_BROKER_WATCH_PID" \
        </dev/null >/dev/null 2>&1 9>&- &
      echo $! >"$DIR/watchdog.pid"
    fi
  fi
  echo "127.0.0.1:$port"
}

cmd_stop() {
  local pid
  [ -d "$DIR" ] || die "no broker directory $DIR"
  DIR=$(cd "$DIR" && pwd)
  exec 9>>"$DIR/lock"
  flock 9
  if pid=$(broker_pid); then stop_pid "$pid"; fi
  rm -f "$DIR/broker.pid"
}

[ $# -ge 2 ] || usage
DIR=$2
case $1 in
  start)
    [ $# -le 3 ] || usage
    cmd_start "${3:-}"
    ;;
  stop)
    [ $# -eq 2 ] || usage
    cmd_stop
    ;;
  watchdog) # internal: started by `start`
    [ $# -eq 3 ] || usage
    watchdog "$3"
    ;;
  *) usage ;;
esac
