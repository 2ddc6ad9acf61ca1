{{/* The models volume and how it gets filled (models.mode: job or initContainer). */}}

{{- define "nightjar.modelsClaim" -}}
{{- default (include "nightjar.name" (dict "root" . "component" "models")) .Values.models.existingClaim -}}
{{- end -}}

{{/* The marker the Job writes last: workers start only once it exists. */}}
{{- define "nightjar.modelsMarker" -}}/models/.nightjar-fetched{{- end -}}

{{/* The fetch command (compose's `models` service): --mirror when a mirror is mounted. */}}
{{- define "nightjar.modelsFetch" -}}
nightjar models fetch --quiet --models-dir /models{{ if .Values.models.mirrorClaim }} --mirror /mirror{{ end }}
{{- end -}}

{{- define "nightjar.modelsContainer" -}}
- name: {{ .name }}
  image: {{ include "nightjar.image" (dict "root" .root "key" "models") }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: ["sh", "-c"]
  args:
    - {{ .script | quote }}
  env:
    - name: NIGHTJAR_MODELS__DIR
      value: /models
  resources:
    {{- toYaml .root.Values.models.resources | nindent 4 }}
  securityContext:
    {{- toYaml .root.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: models
      mountPath: /models
    {{- if .root.Values.models.mirrorClaim }}
    - name: mirror
      mountPath: /mirror
      readOnly: true
    {{- end }}
{{- end -}}

{{/* A worker pod's initContainer: fetch into its emptyDir, or wait for the Job's marker. */}}
{{- define "nightjar.modelsInit" -}}
{{- if eq .Values.models.mode "initContainer" -}}
{{ include "nightjar.modelsContainer" (dict "root" . "name" "models-fetch" "script" (printf "exec %s" (include "nightjar.modelsFetch" .))) }}
{{- else if eq .Values.models.mode "job" -}}
- name: models-wait
  image: {{ include "nightjar.image" (dict "root" . "key" "worker") }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["sh", "-c"]
  args:
    - {{ printf "until [ -f %s ]; do echo 'waiting for the models Job to fill /models'; sleep 10; done" (include "nightjar.modelsMarker" .) | quote }}
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {cpu: 100m, memory: 64Mi}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: models
      mountPath: /models
      readOnly: true
{{- else -}}
{{- fail (printf "models.mode must be job or initContainer, not %q" .Values.models.mode) -}}
{{- end -}}
{{- end -}}

{{- define "nightjar.modelsVolume" -}}
{{- if eq .Values.models.mode "job" }}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "nightjar.modelsClaim" . }}
{{- else }}
- name: models
  emptyDir: {sizeLimit: {{ .Values.models.storage }}}
{{- end }}
{{- if .Values.models.mirrorClaim }}
- name: mirror
  persistentVolumeClaim:
    claimName: {{ .Values.models.mirrorClaim }}
    readOnly: true
{{- end }}
{{- end -}}
