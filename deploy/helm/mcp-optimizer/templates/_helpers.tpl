{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "mcp-optimizer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, prefixed to the chart name unless it already contains it. */}}
{{- define "mcp-optimizer.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mcp-optimizer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mcp-optimizer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mcp-optimizer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mcp-optimizer.labels" -}}
helm.sh/chart: {{ include "mcp-optimizer.chart" . }}
{{ include "mcp-optimizer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mcp-optimizer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mcp-optimizer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mcp-optimizer.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "mcp-optimizer.authSecretName" -}}
{{- default (printf "%s-auth" (include "mcp-optimizer.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "mcp-optimizer.claimName" -}}
{{- default (printf "%s-index" (include "mcp-optimizer.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{- define "mcp-optimizer.leaseName" -}}
{{- printf "%s-writer" (include "mcp-optimizer.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mcp-optimizer.peeringName" -}}
{{- default (include "mcp-optimizer.fullname" .) .Values.peering.name }}
{{- end }}

{{/*
The operator's RBAC rules on namespaced resources: exactly what it does, nothing more.
Each rule is one capability; tests/deploy/test_rbac.py removes them one at a time and shows
which part of the operator's job then fails.
*/}}
{{- define "mcp-optimizer.rules" -}}
# Watch MCPServers (kopf's list+watch streams, the garbage collector's listing).
- apiGroups: ["mcp-optimizer.dev"]
  resources: ["mcpservers"]
  verbs: ["list", "watch"]
# Add and remove the finalizer; kopf's progress and last-handled annotations.
- apiGroups: ["mcp-optimizer.dev"]
  resources: ["mcpservers"]
  verbs: ["patch"]
# Write .status (phase, tool count, registry link, conditions).
- apiGroups: ["mcp-optimizer.dev"]
  resources: ["mcpservers/status"]
  verbs: ["patch"]
# Pod phases of container servers (read-only).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Events on MCPServers (InvalidSpec, ToolsListFailed, RegistryLinked, ...).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
The namespaces whose catalog ConfigMaps are read: the release namespace, then catalogNamespaces
(comma-separated, as MCP_OPTIMIZER_CATALOG_NAMESPACES and for splitList).
*/}}
{{- define "mcp-optimizer.catalogNamespaces" -}}
{{- prepend .Values.catalogNamespaces .Release.Namespace | uniq | join "," }}
{{- end }}

{{/*
Values that cannot work are refused at install time, with what to do instead.
*/}}
{{- define "mcp-optimizer.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.database.existingSecret) }}
{{- fail (printf "replicaCount %v needs a shared database: the embedded SQLite index is one pod's file. Set database.existingSecret (a Secret with a PostgreSQL URL) or keep replicaCount 1" .Values.replicaCount) }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount above 1 needs leaderElection.enabled: otherwise every replica writes the index" }}
{{- end }}
{{- if and .Values.leaderElection.enabled .Values.peering.enabled }}
{{- fail "peering.enabled and leaderElection.enabled are two ways of choosing one writer: turn one off (leaderElection is the one that fences a writer that lost its turn)" }}
{{- end }}
{{- if hasKey .Values.auth "enabled" }}
{{- fail "auth.enabled was replaced by auth.mode: kubernetes (the default: ServiceAccount tokens), tokens (static tokens, as auth.enabled=true was) or none" }}
{{- end }}
{{- if not (has .Values.auth.mode (list "kubernetes" "tokens" "none")) }}
{{- fail (printf "auth.mode must be kubernetes, tokens or none, not %q" (toString .Values.auth.mode)) }}
{{- end }}
{{- if and (eq .Values.auth.mode "tokens") (not .Values.auth.existingSecret) (not .Values.auth.tokens) }}
{{- fail "auth.mode=tokens needs auth.existingSecret or at least one entry in auth.tokens" }}
{{- end }}
{{- if and .Values.exampleCatalog.enabled .Values.exampleCatalog.namespace }}
{{- if not (has .Values.exampleCatalog.namespace (splitList "," (include "mcp-optimizer.catalogNamespaces" .))) }}
{{- fail (printf "exampleCatalog.namespace %s is not a catalog namespace: add it to catalogNamespaces" .Values.exampleCatalog.namespace) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
ToolHive interop: "true" when the chart grants read access to ToolHive's resources, i.e.
toolhive.enabled is true, or auto and ToolHive's API is served when the chart is installed.
*/}}
{{- define "mcp-optimizer.toolhiveEnabled" -}}
{{- $mode := toString .Values.toolhive.enabled -}}
{{- if not (has $mode (list "auto" "true" "false")) -}}
{{- fail (printf "toolhive.enabled must be auto, true or false, got %q" $mode) -}}
{{- end -}}
{{- $served := or (.Capabilities.APIVersions.Has "toolhive.stacklok.dev/v1beta1") (.Capabilities.APIVersions.Has "toolhive.stacklok.dev/v1alpha1") -}}
{{- if or (eq $mode "true") (and (eq $mode "auto") $served) -}}
true
{{- end -}}
{{- end }}

{{/*
The operator's one rule on ToolHive's resources: read them, nothing else (it never writes a
finalizer, annotation or status there). virtualmcpservers only when a group is indexed through one.
*/}}
{{- define "mcp-optimizer.toolhiveRules" -}}
# ToolHive's servers and the MCPToolConfigs they use (read-only; kopf's list+watch streams and
# the garbage collector's listing).
- apiGroups: ["toolhive.stacklok.dev"]
  resources: ["mcpservers", "mcpremoteproxies", "mcpserverentries", "mcptoolconfigs"{{ if .Values.toolhive.vmcpGroups }}, "virtualmcpservers"{{ end }}]
  verbs: ["list", "watch"]
{{- end }}
