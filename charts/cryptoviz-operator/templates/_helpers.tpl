{{/* Naming and labels, after cert-manager's chart: one place decides names and app.kubernetes.io/* labels. */}}

{{/* The chart name, overridable. */}}
{{- define "cryptoviz-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The object name prefix: 63 characters at most (DNS label), the release name alone when it already contains the chart name. */}}
{{- define "cryptoviz-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* chart label value: name-version, "+" is not allowed in label values. */}}
{{- define "cryptoviz-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object but the component (the helm test Pod is not the operator). */}}
{{- define "cryptoviz-operator.baseLabels" -}}
helm.sh/chart: {{ include "cryptoviz-operator.chart" . }}
app.kubernetes.io/name: {{ include "cryptoviz-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "cryptoviz-operator.tag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cryptoviz
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels on every object of the operator. */}}
{{- define "cryptoviz-operator.labels" -}}
{{ include "cryptoviz-operator.baseLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "cryptoviz-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cryptoviz-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "cryptoviz-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cryptoviz-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image tag: image.tag, else the chart's appVersion. */}}
{{- define "cryptoviz-operator.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{/* The operator image reference; a digest pins it. */}}
{{- define "cryptoviz-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository (include "cryptoviz-operator.tag" .) .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "cryptoviz-operator.tag" .) -}}
{{- end -}}
{{- end -}}

{{/* The default worker image (--worker-image): same repository and tag as the operator unless overridden. */}}
{{- define "cryptoviz-operator.workerImage" -}}
{{- $repo := default .Values.image.repository .Values.workerImage.repository -}}
{{- $tag := default (include "cryptoviz-operator.tag" .) .Values.workerImage.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* "true" when leader election is on: asked for, or needed because several replicas run. */}}
{{- define "cryptoviz-operator.leaderElect" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{/*
The operator's permissions on pipelines and their children, shared by the ClusterRole (whole cluster) and
the per-namespace Roles. Only what operator/src uses: no wildcards, no list of Secrets.
*/}}
{{- define "cryptoviz-operator.rules" -}}
# Watch pipelines; merge-patch their finalizers.
- apiGroups: [cryptoviz.io]
  resources: [cryptopipelines]
  verbs: [get, list, watch, patch]
# Server-side apply of the status.
- apiGroups: [cryptoviz.io]
  resources: [cryptopipelines/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion=true: the OwnerReferencesPermissionEnforcement
# admission plugin requires update on the owner's finalizers subresource.
- apiGroups: [cryptoviz.io]
  resources: [cryptopipelines/finalizers]
  verbs: [update]
# Children: watched by label, server-side applied (patch; create is checked when apply creates), deleted
# when a component is turned off.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch, delete]
# A deleted pipeline's worker pods, listed by label until they are gone (before topics and schema are removed).
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# Kafka SASL credentials, the Kafka CA and the database URL, read by name; never listed or watched.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Events on pipelines (created, then patched as a series when they repeat).
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.rbac.podMonitors }}
# A PodMonitor per pipeline (spec.monitoring.podMonitor), read by name, server-side applied, deleted when
# disabled; never listed or watched. Finding out whether the CRDs exist is API discovery
# (GET /apis/monitoring.coreos.com/v1), which every authenticated user may do (system:discovery).
- apiGroups: [monitoring.coreos.com]
  resources: [podmonitors]
  verbs: [get, create, patch, delete]
{{- end }}
{{- end -}}
