{{/*
Names and labels, as in the `helm create` scaffold. Selector labels never
change between releases (Deployments' selectors are immutable).
*/}}

{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "flipserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the prefix of every resource name. Truncated to 47
characters so that the longest suffix ("-copy-job-template", 18) still fits
the 63 characters of a DNS label. If the release name contains the chart
name, it is used alone.
*/}}
{{- define "flipserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "flipserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "flipserve.labels" -}}
helm.sh/chart: {{ include "flipserve.chart" . }}
{{ include "flipserve.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flipserve
{{- end }}

{{/* Selector labels. */}}
{{- define "flipserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flipserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: call with (dict "ctx" $ "component" "api"). */}}
{{- define "flipserve.componentLabels" -}}
{{ include "flipserve.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "api"). */}}
{{- define "flipserve.componentSelectorLabels" -}}
{{ include "flipserve.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The flipserve image reference. */}}
{{- define "flipserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Name of the controller's ServiceAccount. */}}
{{- define "flipserve.controllerServiceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (printf "%s-controller" (include "flipserve.fullname" .)) .Values.controller.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the PVC holding one colour: call with (dict "ctx" $ "colour" "blue"). */}}
{{- define "flipserve.modelClaimName" -}}
{{- printf "%s-model-%s" (include "flipserve.fullname" .ctx) .colour }}
{{- end }}

{{/*
The live API Deployment, if the release already has one. The promotion
controller owns the active colour after the first install (it patches the
Deployment's volume, colour label and annotations), so templates read the
live object back instead of re-applying values.model.initialColour on every
`helm upgrade`. Empty during `helm template`/`--dry-run` and on first install.
*/}}
{{- define "flipserve.liveApiAnnotations" -}}
{{- $live := lookup "apps/v1" "Deployment" .Release.Namespace (include "flipserve.fullname" .) }}
{{- if $live }}
{{- toYaml (default (dict) $live.metadata.annotations) }}
{{- end }}
{{- end }}

{{/* The colour the API serves: the live Deployment's, else values.model.initialColour. */}}
{{- define "flipserve.activeColour" -}}
{{- $ann := include "flipserve.liveApiAnnotations" . | fromYaml }}
{{- $colour := get $ann "flipserve.dev/active-colour" }}
{{- if has $colour (list "blue" "green") }}
{{- $colour }}
{{- else }}
{{- .Values.model.initialColour }}
{{- end }}
{{- end }}

{{/* The colour the preview serves: the one the API does not. */}}
{{- define "flipserve.idleColour" -}}
{{- if eq (include "flipserve.activeColour" .) "blue" }}green{{ else }}blue{{ end }}
{{- end }}

{{/* Name of the Secret with the store's credentials. */}}
{{- define "flipserve.storeSecretName" -}}
{{- if .Values.store.existingSecret }}
{{- .Values.store.existingSecret }}
{{- else }}
{{- printf "%s-store" (include "flipserve.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Whether the store is reached with static keys from a Secret: always with
the embedded object store or store.existingSecret; with an external S3 only when
store.accessKeyId is set. Otherwise no keys are passed and boto3 uses its
default chain (e.g. an IAM role bound to the ServiceAccount). Non-empty means yes.
*/}}
{{- define "flipserve.storeHasKeys" -}}
{{- $s := .Values.store }}
{{- if and (not .Values.objectStore.enabled) (not $s.existingSecret) }}
{{- if and $s.accessKeyId (not $s.secretAccessKey) }}
{{- fail "store.secretAccessKey is required when store.accessKeyId is set" }}
{{- end }}
{{- if and $s.secretAccessKey (not $s.accessKeyId) }}
{{- fail "store.accessKeyId is required when store.secretAccessKey is set" }}
{{- end }}
{{- end }}
{{- if or .Values.objectStore.enabled $s.existingSecret $s.accessKeyId }}true{{ end }}
{{- end }}

{{/* Name of the Secret with the API token. */}}
{{- define "flipserve.apiTokenSecretName" -}}
{{- if .Values.apiToken.existingSecret }}
{{- .Values.apiToken.existingSecret }}
{{- else }}
{{- printf "%s-api-token" (include "flipserve.fullname" .) }}
{{- end }}
{{- end }}

{{/* S3 endpoint: the in-cluster object store when enabled, else values.store.endpointUrl. */}}
{{- define "flipserve.s3EndpointUrl" -}}
{{- if .Values.objectStore.enabled }}
{{- printf "http://%s-object-store.%s.svc:%d" (include "flipserve.fullname" .) .Release.Namespace (int .Values.objectStore.service.port) }}
{{- else }}
{{- .Values.store.endpointUrl }}
{{- end }}
{{- end }}

{{/*
Environment every flipserve container shares: the store and its credentials,
the release and namespace. Names are settings.py fields with FLIPSERVE_.
*/}}
{{- define "flipserve.commonEnv" -}}
- name: FLIPSERVE_RELEASE
  value: {{ include "flipserve.fullname" . | quote }}
- name: FLIPSERVE_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: FLIPSERVE_MODEL_NAME
  value: {{ .Values.model.name | quote }}
- name: FLIPSERVE_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: FLIPSERVE_STORE_URI
  value: {{ .Values.store.uri | quote }}
{{- with include "flipserve.s3EndpointUrl" . }}
- name: FLIPSERVE_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: FLIPSERVE_S3_REGION
  value: {{ .Values.store.region | quote }}
{{- if include "flipserve.storeHasKeys" . }}
- name: FLIPSERVE_S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "flipserve.storeSecretName" . }}
      key: accessKeyId
- name: FLIPSERVE_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "flipserve.storeSecretName" . }}
      key: secretAccessKey
{{- end }}
- name: FLIPSERVE_SHOW_PROGRESS
  value: "false"
- name: FLIPSERVE_CACHE_DIR
  value: /tmp/flipserve
- name: HF_HOME
  value: /tmp/huggingface
- name: HF_HUB_OFFLINE
  value: "1"
{{- end }}

{{/* Environment of a model server (API or preview): call with (dict "ctx" $ "colour" "blue"). */}}
{{- define "flipserve.serverEnv" -}}
{{- $v := .ctx.Values }}
{{ include "flipserve.commonEnv" .ctx }}
- name: FLIPSERVE_COLOUR
  valueFrom:
    fieldRef:
      fieldPath: metadata.labels['flipserve.dev/colour']
- name: FLIPSERVE_MODEL_DIR
  value: /mnt/models
- name: FLIPSERVE_HTTP_PORT
  value: {{ $v.server.port | quote }}
- name: FLIPSERVE_MAX_BATCH_SIZE
  value: {{ $v.server.maxBatchSize | quote }}
- name: FLIPSERVE_MAX_BATCH_WAIT_MS
  value: {{ $v.server.maxBatchWaitMs | quote }}
- name: FLIPSERVE_MAX_ITEMS_PER_REQUEST
  value: {{ $v.server.maxItemsPerRequest | quote }}
- name: FLIPSERVE_TORCH_THREADS
  value: {{ $v.server.torchThreads | quote }}
- name: FLIPSERVE_DRIFT_BACKEND
  value: {{ $v.drift.backend | quote }}
- name: FLIPSERVE_DRIFT_P_VALUE
  value: {{ $v.drift.pValue | quote }}
- name: FLIPSERVE_DRIFT_WINDOW
  value: {{ $v.drift.window | quote }}
- name: FLIPSERVE_DRIFT_MIN_SAMPLES
  value: {{ $v.drift.minSamples | quote }}
- name: FLIPSERVE_DRIFT_INTERVAL_S
  value: {{ $v.drift.intervalSeconds | quote }}
- name: FLIPSERVE_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "flipserve.apiTokenSecretName" .ctx }}
      key: token
{{- end }}

{{/* Writable scratch space for containers whose root filesystem is read-only. */}}
{{- define "flipserve.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{/* Labels of the copy Jobs the controller creates (not managed by Helm). */}}
{{- define "flipserve.copyJobLabels" -}}
{{ include "flipserve.componentSelectorLabels" (dict "ctx" . "component" "copy") }}
app.kubernetes.io/part-of: flipserve
app.kubernetes.io/managed-by: flipserve-controller
{{- end }}
