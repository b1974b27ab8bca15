{{- define "notes.labels" -}}
app.kubernetes.io/part-of: notes
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
