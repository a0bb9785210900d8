# Sourced by tests/env/kafka/{install,start,stop,kafka-cli}: paths shared by the Kafka scripts.
# The Kafka version is pinned in pom.xml (<kafka.version>) and read from there, so it lives in one place.
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

KAFKA_DIR="$ENV_DIR/kafka"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_DIR/pom.xml")"
[[ -n "$KAFKA_VERSION" ]] || die "kafka: no <kafka.version> in $KAFKA_DIR/pom.xml"
KAFKA_HOME="$CRYPTOVIZ_CACHE/kafka/$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_STATE="$CRYPTOVIZ_STATE/kafka"

# kafka_java CLASS ARGS...: run a class from the Kafka libs with the quiet tools logging config.
kafka_java() {
  [[ -f "$KAFKA_HOME/.complete" ]] || die "kafka $KAFKA_VERSION is not installed: run tests/env/kafka/install"
  java ${CRYPTOVIZ_KAFKA_TOOLS_OPTS:--Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1} \
    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2-tools.properties" \
    -cp "$KAFKA_LIBS/*" "$@"
}
