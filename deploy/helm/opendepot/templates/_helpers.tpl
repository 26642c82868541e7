{{- define "opendepot.labels" -}}
app.kubernetes.io/name: opendepot
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "opendepot.selector" -}}
app.kubernetes.io/name: opendepot
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "opendepot.fullname" -}}
{{- if eq .Release.Name "opendepot" }}opendepot{{ else }}{{ printf "%s-opendepot" .Release.Name | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}
