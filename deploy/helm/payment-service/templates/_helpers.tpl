{{/* Names ------------------------------------------------------------------------- */}}

{{- define "payment-service.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name; components append -api, -webhooks, -migrations. */}}
{{- define "payment-service.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "payment-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "payment-service.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image and version ---------------------------------------------------------------- */}}

{{- define "payment-service.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{- define "payment-service.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository (include "payment-service.imageTag" .) .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "payment-service.imageTag" .) -}}
{{- end -}}
{{- end -}}

{{- define "payment-service.version" -}}
{{- .Values.datadog.version | default (include "payment-service.imageTag" .) -}}
{{- end -}}

{{/* Labels ---------------------------------------------------------------------------- */}}

{{/* Datadog unified service tags: on every workload and pod template. */}}
{{- define "payment-service.datadogLabels" -}}
tags.datadoghq.com/env: {{ .Values.datadog.env | quote }}
tags.datadoghq.com/service: {{ .Values.datadog.service | quote }}
tags.datadoghq.com/version: {{ include "payment-service.version" . | quote }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "api"). */}}
{{- define "payment-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "payment-service.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of one component's objects; same argument. */}}
{{- define "payment-service.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "payment-service.selectorLabels" . }}
app.kubernetes.io/version: {{ include "payment-service.version" .root | quote }}
app.kubernetes.io/part-of: payment-service
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{ include "payment-service.datadogLabels" .root }}
{{- end -}}

{{/* Pod template labels: the above, plus the Datadog admission controller's opt-in. */}}
{{- define "payment-service.podLabels" -}}
{{ include "payment-service.labels" . }}
{{- if .root.Values.datadog.admissionController }}
admission.datadoghq.com/enabled: "true"
{{- end }}
{{- end -}}

{{/* Autodiscovery log config of one container; (dict "root" $ "container" "api"). */}}
{{- define "payment-service.logsAnnotation" -}}
ad.datadoghq.com/{{ .container }}.logs: {{ list (dict "source" .root.Values.datadog.logsSource "service" .root.Values.datadog.service) | toJson | quote }}
{{- end -}}

{{/* Pod spec pieces ----------------------------------------------------------------- */}}

{{/* The image's user (Dockerfile: USER 10001:10001). */}}
{{- define "payment-service.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "payment-service.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The only writable path: /tmp (Python's tempfile, ddtrace). */}}
{{- define "payment-service.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "payment-service.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "payment-service.scheduling" -}}
{{- with .root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- /* Deployments only: a Job's one pod has nothing to spread from. */}}
{{- if and .root.Values.spreadPods (ne .component "migrations") }}
topologySpreadConstraints:
  {{- range list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
  - topologyKey: {{ . }}
    maxSkew: 1
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "payment-service.selectorLabels" $ | nindent 8 }}
    matchLabelKeys: ["pod-template-hash"]
  {{- end }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Environment ------------------------------------------------------------------- */}}

{{/* DD_ENV/DD_SERVICE/DD_VERSION from the pod's own labels, and where the Agent is. */}}
{{- define "payment-service.datadogEnv" -}}
{{- range $name, $label := dict "DD_ENV" "env" "DD_SERVICE" "service" "DD_VERSION" "version" }}
- name: {{ $name }}
  valueFrom:
    fieldRef:
      fieldPath: metadata.labels['tags.datadoghq.com/{{ $label }}']
{{- end }}
- name: DD_AGENT_HOST
{{- if .Values.datadog.agentHost }}
  value: {{ .Values.datadog.agentHost | quote }}
{{- else }}
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end }}
- name: DD_ENTITY_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.uid
{{- end -}}

{{/* One variable from the release's Secret; (dict "root" $ "name" "X" "key" "k"). */}}
{{- define "payment-service.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.secrets.name }}
      key: {{ .key }}
{{- end -}}

{{/* What the API and the dispatcher both read from the Secret. */}}
{{- define "payment-service.appSecretEnv" -}}
{{- $keys := .Values.secrets.keys -}}
{{ include "payment-service.secretEnv" (dict "root" . "name" "DATABASE_URL" "key" $keys.databaseUrl) }}
{{ include "payment-service.secretEnv" (dict "root" . "name" "CARD_ENCRYPTION_KEYS" "key" $keys.cardEncryptionKeys) }}
{{ include "payment-service.secretEnv" (dict "root" . "name" "CARD_ENCRYPTION_CURRENT_KEY_ID" "key" $keys.cardEncryptionCurrentKeyId) }}
{{ include "payment-service.secretEnv" (dict "root" . "name" "CARD_FINGERPRINT_KEY" "key" $keys.cardFingerprintKey) }}
{{ include "payment-service.secretEnv" (dict "root" . "name" "API_KEY_PEPPER" "key" $keys.apiKeyPepper) }}
{{- end -}}

{{/* Egress rules; (dict "root" $ "rules" (list "dns" "kafka")). */}}
{{- define "payment-service.egressRules" -}}
{{- range .rules }}
{{- $rule := get $.root.Values.networkPolicy.egress . }}
- # {{ . }}
  {{- with $rule.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    {{- toYaml $rule.ports | nindent 4 }}
{{- end }}
{{- end -}}
