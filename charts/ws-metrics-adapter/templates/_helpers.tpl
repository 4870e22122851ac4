{{/* Labels of every object: the base's name label plus Helm's. */}}
{{- define "wsma.labels" -}}
app.kubernetes.io/name: ws-metrics-adapter
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The pods' selector; the same as the base's, and immutable in a Deployment. */}}
{{- define "wsma.selectorLabels" -}}
app.kubernetes.io/name: ws-metrics-adapter
{{- end -}}

{{- define "wsma.image" -}}
{{- $i := .Values.image -}}
{{- if $i.digest -}}
{{ $i.repository }}@{{ $i.digest }}
{{- else -}}
{{ $i.repository }}:{{ $i.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The APIServices served, preferred first: their names, one per line. */}}
{{- define "wsma.apiServiceNames" -}}
v1beta2.custom.metrics.k8s.io
v1beta1.custom.metrics.k8s.io
{{- if .Values.externalMetrics.enabled }}
v1beta1.external.metrics.k8s.io
{{- end }}
{{- end -}}

{{/* The DNS name the aggregator checks in the serving certificate. */}}
{{- define "wsma.serviceDNS" -}}
ws-metrics-adapter.{{ .Release.Namespace }}.svc
{{- end -}}

{{/* Values that are wrong together fail the render, with the fix. */}}
{{- define "wsma.validate" -}}
{{- if and .Values.rebalance.enabled (ne .Values.source.kind "scrape") -}}
{{- fail (printf "rebalance.enabled needs source.kind=scrape (the workload controller measures the adapter's own scrapes): set rebalance.enabled=false with source.kind=%s" .Values.source.kind) -}}
{{- end -}}
{{- if and (eq .Values.source.kind "remote-write") (ne (int .Values.replicas) 1) -}}
{{- fail "source.kind=remote-write needs replicas=1: each replica serves only what was written to it, and the Service spreads the agents' connections over the replicas (README \"A third source: remote-write from sharded agents\")" -}}
{{- end -}}
{{- if and (eq .Values.source.kind "prometheus") (not .Values.source.prometheus.url) -}}
{{- fail "source.kind=prometheus needs source.prometheus.url (e.g. http://prometheus-operated.monitoring:9090)" -}}
{{- end -}}
{{- if eq .Values.servingTLS.mode "existingSecret" -}}
{{- if or (not .Values.servingTLS.existingSecret.name) (not .Values.servingTLS.existingSecret.caBundle) -}}
{{- fail "servingTLS.mode=existingSecret needs servingTLS.existingSecret.name (a kubernetes.io/tls Secret in the release namespace) and servingTLS.existingSecret.caBundle (base64 PEM of its CA)" -}}
{{- end -}}
{{- end -}}
{{- end -}}
