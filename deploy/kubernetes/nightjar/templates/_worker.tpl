{{/* One Dask worker pool (CPU or GPU): dict root, component, pool (its values), imageKey, gpu. */}}
{{- define "nightjar.workerPool" -}}
{{- $root := .root -}}
{{- $pool := .pool -}}
{{- $ctx := dict "root" $root "component" .component -}}
{{- $name := include "nightjar.name" $ctx -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "nightjar.labels" $ctx | nindent 4 }}
spec:
  {{- /* Under autoscaling KEDA owns the replica count of the CPU pool. */}}
  {{- if not (and $root.Values.autoscaling.enabled (eq .component "worker")) }}
  replicas: {{ $pool.replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "nightjar.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "nightjar.labels" $ctx | nindent 8 }}
        nightjar.io/dask-worker: "true"
      annotations:
        checksum/config: {{ toJson $root.Values.config | sha256sum }}
    spec:
      {{- include "nightjar.podCommon" $root | nindent 6 }}
      {{- include "nightjar.placement" $pool | nindent 6 }}
      initContainers:
        {{- include "nightjar.modelsInit" $root | nindent 8 }}
      containers:
        - name: worker
          image: {{ include "nightjar.image" (dict "root" $root "key" .imageKey) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            - dask
            - worker
            - {{ include "nightjar.schedulerAddress" $root | quote }}
            - --name
            - $(POD_NAME)
            - --nthreads
            - {{ $pool.threads | quote }}
            - --memory-limit
            - {{ $pool.memoryLimit | quote }}
            - --dashboard-address
            - {{ printf ":%v" $pool.dashboardPort | quote }}
          env:
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- if .gpu }}
            # Fail loudly without a GPU rather than fall back to the CPU.
            - name: NIGHTJAR_MODELS__PROVIDER
              value: cuda
            {{- end }}
            {{- include "nightjar.commonEnv" $root | nindent 12 }}
            {{- with $pool.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: dashboard
              containerPort: {{ $pool.dashboardPort }}
          {{- include "nightjar.daskProbes" (dict "root" $root "port" "dashboard") | nindent 10 }}
          resources:
            requests:
              {{- toYaml $pool.resources.requests | nindent 14 }}
            limits:
              {{- toYaml $pool.resources.limits | nindent 14 }}
              {{- if .gpu }}
              nvidia.com/gpu: {{ $pool.gpus }}
              {{- end }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: models
              mountPath: /models
              readOnly: true
            {{- include "nightjar.configMount" $root | nindent 12 }}
      volumes:
        {{- include "nightjar.modelsVolume" $root | nindent 8 }}
        {{- include "nightjar.configVolume" $root | nindent 8 }}
{{ include "nightjar.pdb" (merge (dict "pdb" $pool.pdb) $ctx) }}
{{- end -}}
