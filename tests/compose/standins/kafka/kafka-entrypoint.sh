#!/usr/bin/env bash
# apache/kafka's convention: every KAFKA_<NAME> variable is the property <name> with '_' -> '.'.
set -euo pipefail
config=/opt/kafka/config
mkdir -p "$config"
: >"$config/server.properties"
while IFS='=' read -r name value; do
    case $name in KAFKA_HEAP_OPTS | KAFKA_OPTS) continue ;; esac
    key=$(echo "${name#KAFKA_}" | tr '[:upper:]_' '[:lower:].')
    echo "$key=$value" >>"$config/server.properties"
done < <(env | grep '^KAFKA_')
cat >"$config/log4j.properties" <<'LOG'
log4j.rootLogger=WARN, stdout
log4j.logger.kafka.server.BrokerServer=INFO
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
LOG
jvm=(java ${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m} -Djava.awt.headless=true
    "-Dlog4j.configuration=file:$config/log4j.properties" -cp '/opt/kafka/libs/*')
# Format the KRaft storage once; the volume then carries the cluster id.
"${jvm[@]}" kafka.tools.StorageTool format --ignore-formatted \
    -t "${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" -c "$config/server.properties" >/dev/null
exec "${jvm[@]}" kafka.Kafka "$config/server.properties"
