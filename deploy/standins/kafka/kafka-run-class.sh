#!/bin/bash
# java on the Kafka jars, with the heap and log4j2 defaults of Kafka's own
# scripts: 1 GB and config/log4j2.yaml for the broker, 256 MB and WARN to
# stderr (config/tools-log4j2.yaml) for the command-line tools.
set -eu
class="$1"; shift
if [ "$class" = kafka.Kafka ]; then
  heap="${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}"
  log4j="${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=/opt/kafka/config/log4j2.yaml}"
else
  heap="${KAFKA_HEAP_OPTS:--Xmx256M}"
  log4j="${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=/opt/kafka/config/tools-log4j2.yaml}"
fi
# shellcheck disable=SC2086
exec java $heap ${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseG1GC -Djava.awt.headless=true} $log4j ${KAFKA_OPTS:-} \
  -cp "/opt/kafka/libs/*" "$class" "$@"
