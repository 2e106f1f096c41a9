{{- /*
Checks across values that values.schema.json cannot express. Each fails the render with the
values named, before anything is installed.
*/ -}}
{{- if and (not .Values.minio.enabled) (not .Values.storage.endpoint) }}
{{- fail "storage.endpoint is required when minio.enabled=false" }}
{{- end }}
{{- if and (not .Values.minio.enabled) (not .Values.storage.existingSecret) (not (and .Values.storage.accessKey .Values.storage.secretKey)) }}
{{- fail "external storage needs storage.existingSecret (or storage.accessKey and storage.secretKey)" }}
{{- end }}
{{- if or (and .Values.storage.accessKey (not .Values.storage.secretKey)) (and .Values.storage.secretKey (not .Values.storage.accessKey)) }}
{{- fail "storage.accessKey and storage.secretKey go together" }}
{{- end }}
{{- if or (and .Values.runner.s3.accessKey (not .Values.runner.s3.secretKey)) (and .Values.runner.s3.secretKey (not .Values.runner.s3.accessKey)) }}
{{- fail "runner.s3.accessKey and runner.s3.secretKey go together" }}
{{- end }}
{{- if and .Values.shim.enabled .Values.shim.apiKeys.existingSecret }}
{{- range (include "openbatch.tenantsJson" . | fromJson).tenants }}
{{- if .apiKeys }}
{{- fail (printf "tenant %s lists apiKeys, but shim.apiKeys.existingSecret replaces them: put the keys in that Secret" .namespace) }}
{{- end }}
{{- end }}
{{- end }}
{{- $pdb := .Values.shim.podDisruptionBudget }}
{{- if and .Values.shim.enabled $pdb.enabled (not (kindIs "string" $pdb.minAvailable)) }}
{{- if ge (int $pdb.minAvailable) (int .Values.shim.replicas) }}
{{- fail (printf "shim.podDisruptionBudget.minAvailable (%d) must be below shim.replicas (%d), or no node could ever be drained" (int $pdb.minAvailable) (int .Values.shim.replicas)) }}
{{- end }}
{{- end }}
{{- if and .Values.shim.enabled (not .Values.shim.apiKeys.existingSecret) (not .Values.shim.apiKeys.generate) }}
{{- $any := false }}
{{- range (include "openbatch.tenantsJson" . | fromJson).tenants }}
{{- if .apiKeys }}{{ $any = true }}{{ end }}
{{- end }}
{{- if not $any }}
{{- fail "the shim has no API keys (with none it would accept any request): list tenant apiKeys, set shim.apiKeys.generate or shim.apiKeys.existingSecret" }}
{{- end }}
{{- end }}
