{{/*
Names, labels and the derived settings every template shares. Templates read values only
through these helpers where a value has a default or depends on another value, so a rule
(which Secret runners use, which namespaces are tenants) is written once.
*/}}

{{- define "openbatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* `<release>-openbatch`, or the release name when it already contains the chart name. */}}
{{- define "openbatch.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "openbatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass (dict "ctx" $ "component" "operator"). */}}
{{- define "openbatch.labels" -}}
helm.sh/chart: {{ include "openbatch.chart" .ctx }}
{{ include "openbatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: openbatch
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "openbatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "openbatch.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Runner and finalize pods carry the operator's labels (operator/openbatch_operator/resources.py). */}}
{{- define "openbatch.runnerSelector" -}}
app.kubernetes.io/name: openbatch-runner
app.kubernetes.io/managed-by: openbatch-operator
{{- end }}

{{/* An image reference; pass (dict "image" .Values.x.image "ctx" $). */}}
{{- define "openbatch.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{- define "openbatch.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "openbatch.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "openbatch.shimServiceAccount" -}}
{{- if .Values.shim.serviceAccount.create }}
{{- default (printf "%s-shim" (include "openbatch.fullname" .)) .Values.shim.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.shim.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "openbatch.routingConfigMap" -}}
{{- printf "%s-routing" (include "openbatch.fullname" .) }}
{{- end }}

{{- define "openbatch.tenantsConfigMap" -}}
{{- printf "%s-tenants" (include "openbatch.fullname" .) }}
{{- end }}

{{- define "openbatch.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "openbatch.fullname" .)) .Values.shim.apiKeys.existingSecret }}
{{- end }}

{{- define "openbatch.minioName" -}}
{{- printf "%s-minio" (include "openbatch.fullname" .) }}
{{- end }}

{{- define "openbatch.minioSecret" -}}
{{- default (include "openbatch.minioName" .) .Values.minio.auth.existingSecret }}
{{- end }}

{{/* The S3 endpoint every component uses (runner pods in other namespaces too: a full name). */}}
{{- define "openbatch.s3Endpoint" -}}
{{- if .Values.minio.enabled }}
{{- printf "http://%s.%s.svc.%s:9000" (include "openbatch.minioName" .) .Release.Namespace .Values.clusterDomain }}
{{- else }}
{{- required "storage.endpoint is required when minio.enabled=false" .Values.storage.endpoint }}
{{- end }}
{{- end }}

{{/* The port of the S3 endpoint (for NetworkPolicies). */}}
{{- define "openbatch.s3Port" -}}
{{- $url := urlParse (include "openbatch.s3Endpoint" .) }}
{{- $parts := splitList ":" $url.host }}
{{- if gt (len $parts) 1 }}{{ last $parts }}{{ else if eq $url.scheme "https" }}443{{ else }}80{{ end }}
{{- end }}

{{/* The operator's and shim's own S3 credentials Secret (release namespace). */}}
{{- define "openbatch.storageSecret" -}}
{{- default (printf "%s-s3" (include "openbatch.fullname" .)) .Values.storage.existingSecret }}
{{- end }}

{{/* Whether the chart creates the operator's and shim's credentials Secret (validation.tpl
refuses external storage without credentials). */}}
{{- define "openbatch.createStorageSecret" -}}
{{- if not .Values.storage.existingSecret }}
{{- "true" }}
{{- end }}
{{- end }}

{{/* Whether the chart creates the default tenant's runner credentials Secret. */}}
{{- define "openbatch.createRunnerSecret" -}}
{{- if and (not .Values.runner.s3.existingSecret) (or .Values.minio.enabled (and .Values.runner.s3.accessKey .Values.runner.s3.secretKey)) }}
{{- "true" }}
{{- end }}
{{- end }}

{{/* The runner credentials Secret of the default tenant (release namespace). */}}
{{- define "openbatch.runnerSecret" -}}
{{- if .Values.runner.s3.existingSecret }}
{{- .Values.runner.s3.existingSecret }}
{{- else if include "openbatch.createRunnerSecret" . }}
{{- printf "%s-runner-s3" (include "openbatch.fullname" .) }}
{{- else }}
{{- include "openbatch.storageSecret" . }}
{{- end }}
{{- end }}

{{/*
The effective tenants as JSON `{"tenants": [...]}` (API keys included: strip them before
rendering anything that is not a Secret). Empty `tenants`: the release namespace alone.
*/}}
{{- define "openbatch.tenantsJson" -}}
{{- $tenants := list }}
{{- if .Values.tenants }}
{{- $seen := dict }}
{{- range .Values.tenants }}
{{- if hasKey $seen .namespace }}
{{- fail (printf "tenants: namespace %s is listed twice" .namespace) }}
{{- end }}
{{- $_ := set $seen .namespace true }}
{{- $tenant := dict "namespace" .namespace "storage" (dict "bucket" .storage.bucket "prefix" (.storage.prefix | default "") "credentialsSecret" .storage.credentialsSecret) "apiKeys" (.apiKeys | default list) }}
{{- if .caps }}{{ $_ := set $tenant "caps" .caps }}{{ end }}
{{- /* Absent: the defaults' list applies; given (even empty): it replaces them. */}}
{{- if hasKey . "allowedModelServerURLs" }}{{ $_ := set $tenant "allowedModelServerURLs" .allowedModelServerURLs }}{{ end }}
{{- $tenants = append $tenants $tenant }}
{{- end }}
{{- else }}
{{- $d := .Values.defaultTenant }}
{{- $tenants = list (dict "namespace" .Release.Namespace "storage" (dict "bucket" .Values.storage.bucket "prefix" .Values.storage.prefix "credentialsSecret" (include "openbatch.runnerSecret" .)) "caps" $d.caps "allowedModelServerURLs" $d.allowedModelServerURLs "apiKeys" $d.apiKeys) }}
{{- if not $d.caps }}{{ $tenants = list (omit (first $tenants) "caps") }}{{ end }}
{{- end }}
{{- dict "tenants" $tenants | toJson }}
{{- end }}

{{/* The tenants file the operator and shim read: the same list without API keys. */}}
{{- define "openbatch.tenantsFile" -}}
{{- $tenants := list }}
{{- range (include "openbatch.tenantsJson" . | fromJson).tenants }}
{{- $tenants = append $tenants (omit . "apiKeys") }}
{{- end }}
{{- $defaults := dict "caps" .Values.tenantDefaults.caps "allowedModelServerURLs" .Values.tenantDefaults.allowedModelServerURLs }}
{{- dict "tenants" $tenants "defaults" $defaults | toPrettyJson }}
{{- end }}

{{/* Namespaces that hold a routing-table ConfigMap: the release namespace (operator, shim)
and every tenant namespace (runner pods mount it from their own), as a JSON list. */}}
{{- define "openbatch.routingNamespaces" -}}
{{- prepend (include "openbatch.tenantNamespaces" . | fromJsonArray) .Release.Namespace | uniq | toJson }}
{{- end }}

{{/* Every base URL of the routing table (entries: a URL, a list, or {urls, apiKeySecret}). */}}
{{- define "openbatch.routedURLs" -}}
{{- $urls := list }}
{{- range $model, $entry := .Values.routing.models }}
{{- if kindIs "string" $entry }}
{{- $urls = append $urls $entry }}
{{- else if kindIs "slice" $entry }}
{{- $urls = concat $urls $entry }}
{{- else }}
{{- $urls = concat $urls $entry.urls }}
{{- end }}
{{- end }}
{{- $urls | toJson }}
{{- end }}

{{/* Tenant namespaces as a JSON list. */}}
{{- define "openbatch.tenantNamespaces" -}}
{{- $names := list }}
{{- range (include "openbatch.tenantsJson" . | fromJson).tenants }}
{{- $names = append $names .namespace }}
{{- end }}
{{- $names | toJson }}
{{- end }}

{{/* Buckets of every tenant (for the MinIO setup Job), as a JSON list. */}}
{{- define "openbatch.tenantBuckets" -}}
{{- $buckets := list .Values.storage.bucket }}
{{- range (include "openbatch.tenantsJson" . | fromJson).tenants }}
{{- $buckets = append $buckets .storage.bucket }}
{{- end }}
{{- $buckets | uniq | toJson }}
{{- end }}

{{/*
A secret value: the explicit value, else the one already stored in the live Secret (so
upgrades keep generated credentials), else a new random one.
Pass (dict "ctx" $ "secret" NAME "key" KEY "value" EXPLICIT "length" N).
*/}}
{{- define "openbatch.secretValue" -}}
{{- if .value }}
{{- .value }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret }}
{{- $data := dict }}
{{- if $existing }}{{ $data = $existing.data | default dict }}{{ end }}
{{- if hasKey $data .key }}
{{- index $data .key | b64dec }}
{{- else }}
{{- randAlphaNum (int .length) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Model-server egress peers derived from the routing table: the Service's namespace (the
second DNS label of `svc.ns.svc...`; a bare name is the release namespace) or an IP literal's
/32, with the URL's port.
*/}}
{{- define "openbatch.routedPeers" -}}
{{- $peers := list }}
{{- $seen := dict }}
{{- range (include "openbatch.routedURLs" . | fromJsonArray) }}
{{- $url := urlParse . }}
{{- $hostport := splitList ":" $url.host }}
{{- $host := first $hostport }}
{{- $port := "" }}
{{- if gt (len $hostport) 1 }}{{ $port = last $hostport }}{{ else if eq $url.scheme "https" }}{{ $port = "443" }}{{ else }}{{ $port = "80" }}{{ end }}
{{- $peer := dict "port" (int $port) }}
{{- if regexMatch "^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+$" $host }}
{{- $_ := set $peer "cidr" (printf "%s/32" $host) }}
{{- else }}
{{- $labels := splitList "." $host }}
{{- if gt (len $labels) 1 }}
{{- $_ := set $peer "namespace" (index $labels 1) }}
{{- else }}
{{- $_ := set $peer "namespace" $.Release.Namespace }}
{{- end }}
{{- end }}
{{- $key := printf "%s/%s:%s" ($peer.namespace | default "") ($peer.cidr | default "") $port }}
{{- if not (hasKey $seen $key) }}
{{- $_ := set $seen $key true }}
{{- $peers = append $peers $peer }}
{{- end }}
{{- end }}
{{- $peers | toJson }}
{{- end }}

{{/* Egress to the cluster DNS. */}}
{{- define "openbatch.dnsEgress" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .Values.networkPolicy.dns.namespace }}
      podSelector:
        matchLabels:
          {{- toYaml .Values.networkPolicy.dns.podLabels | nindent 10 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end }}

{{/* Egress to object storage (the chart's MinIO pods, or the external endpoint). */}}
{{- define "openbatch.storageEgress" -}}
{{- if .Values.minio.enabled -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .Release.Namespace }}
      podSelector:
        matchLabels:
          {{- include "openbatch.selectorLabels" (dict "ctx" . "component" "minio") | nindent 10 }}
  ports:
    - protocol: TCP
      port: 9000
{{- else -}}
- ports:
    - protocol: TCP
      port: {{ include "openbatch.s3Port" . }}
  {{- with .Values.networkPolicy.objectStorage.peers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Egress to the Kubernetes API server. */}}
{{- define "openbatch.apiServerEgress" -}}
- ports:
    {{- range .Values.networkPolicy.apiServer.ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- with .Values.networkPolicy.apiServer.peers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
