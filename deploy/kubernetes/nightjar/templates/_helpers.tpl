{{/* Names, labels, images and the settings every Nightjar container shares. */}}

{{- define "nightjar.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A component's object name: <fullname>-<component>. */}}
{{- define "nightjar.name" -}}
{{- printf "%s-%s" (include "nightjar.fullname" .root) .component -}}
{{- end -}}

{{- define "nightjar.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "nightjar.labels" -}}
{{ include "nightjar.selectorLabels" . }}
app.kubernetes.io/part-of: nightjar
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* "<registry><repository>:<tag>" for images.<key>; the tag falls back to image.tag. */}}
{{- define "nightjar.image" -}}
{{- $image := index .root.Values.images .key -}}
{{- printf "%s%s:%s" .root.Values.image.registry $image.repository (default .root.Values.image.tag $image.tag) -}}
{{- end -}}

{{- define "nightjar.schedulerAddress" -}}
{{- if .Values.scheduler.externalAddress -}}
{{- .Values.scheduler.externalAddress -}}
{{- else -}}
{{- printf "tcp://%s:%v" (include "nightjar.name" (dict "root" . "component" "scheduler")) .Values.scheduler.port -}}
{{- end -}}
{{- end -}}

{{- define "nightjar.bootstrapServers" -}}
{{- if .Values.kafka.inCluster.enabled -}}
{{- printf "%s:9092" (include "nightjar.name" (dict "root" . "component" "kafka")) -}}
{{- else -}}
{{- required "kafka.bootstrapServers is required (or kafka.inCluster.enabled)" .Values.kafka.bootstrapServers -}}
{{- end -}}
{{- end -}}

{{/* NIGHTJAR_MONGO__URI: the in-cluster server (no credentials), else the Secret's key. */}}
{{- define "nightjar.mongoEnv" -}}
- name: NIGHTJAR_MONGO__URI
{{- if .Values.mongo.inCluster.enabled }}
  value: {{ printf "mongodb://%s:27017" (include "nightjar.name" (dict "root" . "component" "mongo")) | quote }}
{{- else }}
  valueFrom:
    secretKeyRef:
      name: {{ required "mongo.uriSecret.name: the Secret holding the MongoDB URI" .Values.mongo.uriSecret.name }}
      key: {{ .Values.mongo.uriSecret.key }}
{{- end }}
- name: NIGHTJAR_MONGO__DATABASE
  value: {{ .Values.mongo.database | quote }}
{{- if gt (int .Values.broker.replicas) 1 }}
{{- /* Several brokers store alerts of the same objects at once (broker.history.repair). */}}
- name: NIGHTJAR_MONGO__REPAIR_LIGHT_CURVES
  value: "true"
{{- end }}
{{- end -}}

{{/* Settings of the broker and poster: Kafka, MongoDB, then the common ones. */}}
{{- define "nightjar.env" -}}
- name: NIGHTJAR_KAFKA__BOOTSTRAP_SERVERS
  value: {{ include "nightjar.bootstrapServers" . | quote }}
- name: NIGHTJAR_KAFKA__GROUP_ID
  value: {{ .Values.kafka.groupId | quote }}
{{- with .Values.kafka.topics }}
- name: NIGHTJAR_KAFKA__TOPICS
  value: {{ toJson . | quote }}
{{- end }}
{{- with .Values.kafka.securityProtocol }}
- name: NIGHTJAR_KAFKA__SECURITY_PROTOCOL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.kafka.saslMechanism }}
- name: NIGHTJAR_KAFKA__SASL_MECHANISM
  value: {{ . | quote }}
{{- end }}
{{- with .Values.kafka.saslUsername }}
- name: NIGHTJAR_KAFKA__SASL_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- if .Values.kafka.saslPasswordSecret.name }}
- name: NIGHTJAR_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.saslPasswordSecret.name }}
      key: {{ .Values.kafka.saslPasswordSecret.key }}
{{- end }}
{{ include "nightjar.mongoEnv" . }}
{{ include "nightjar.commonEnv" . }}
{{- end -}}

{{/* What Dask workers need too: they do no I/O besides reading models, so no Kafka,
MongoDB or Fritz settings (nor their Secrets) reach them. */}}
{{- define "nightjar.commonEnv" -}}
- name: NIGHTJAR_DISPATCH__SCHEDULER_ADDRESS
  value: {{ include "nightjar.schedulerAddress" . | quote }}
- name: NIGHTJAR_MODELS__DIR
  value: /models
- name: NIGHTJAR_LOGGING__LEVEL
  value: {{ .Values.logLevel | quote }}
{{- include "nightjar.configEnv" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The optional config file: its variable, volumeMounts and volumes entries. */}}
{{- define "nightjar.configEnv" -}}
{{- if .Values.config }}
- name: NIGHTJAR_CONFIG
  value: /etc/nightjar/nightjar.yaml
{{- end }}
{{- end -}}

{{- define "nightjar.configMount" -}}
{{- if .Values.config }}
- name: config
  mountPath: /etc/nightjar
  readOnly: true
{{- end }}
{{- end -}}

{{- define "nightjar.configVolume" -}}
{{- if .Values.config }}
- name: config
  configMap:
    name: {{ include "nightjar.name" (dict "root" . "component" "config") }}
{{- end }}
{{- end -}}

{{/* /livez and /readyz of broker/health.py on the named port. */}}
{{- define "nightjar.healthProbes" -}}
livenessProbe:
  httpGet: {path: /livez, port: {{ .port }}}
  {{- toYaml .root.Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet: {path: /readyz, port: {{ .port }}}
  {{- toYaml .root.Values.probes.readiness | nindent 2 }}
{{- end -}}

{{/* Dask's /health (scheduler and workers answer it on their dashboard port). */}}
{{- define "nightjar.daskProbes" -}}
livenessProbe:
  httpGet: {path: /health, port: {{ .port }}}
  {{- toYaml .root.Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet: {path: /health, port: {{ .port }}}
  {{- toYaml .root.Values.probes.readiness | nindent 2 }}
{{- end -}}

{{- define "nightjar.podCommon" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* nodeSelector, tolerations and affinity of one component's values. */}}
{{- define "nightjar.placement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A PodDisruptionBudget for one component: dict root, component, pdb. */}}
{{- define "nightjar.pdb" -}}
{{- if .pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "nightjar.name" . }}
  labels:
    {{- include "nightjar.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "nightjar.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}
