{{/* Chart name, 63 characters at most. */}}
{{- define "permafrost.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: release-chart unless the release name holds the chart's. */}}
{{- define "permafrost.fullname" -}}
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

{{- define "permafrost.selectorLabels" -}}
app.kubernetes.io/name: {{ include "permafrost.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "permafrost.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "permafrost.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "permafrost.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "permafrost.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "permafrost.configMapName" -}}
{{- default (include "permafrost.fullname" .) .Values.existingConfigMap }}
{{- end }}

{{- define "permafrost.secretName" -}}
{{- default (include "permafrost.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* permafrost's own grace period: five seconds inside Kubernetes'. */}}
{{- define "permafrost.grace" -}}
{{- $g := sub (int .Values.terminationGracePeriodSeconds) 5 }}
{{- if lt $g 1 }}{{ $g = 1 }}{{ end }}
{{- printf "%ds" $g }}
{{- end }}

{{/* The pod spec shared by the CronJob and the Deployment; `args` in the context. */}}
{{- define "permafrost.podSpec" -}}
{{- $root := .root -}}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ include "permafrost.serviceAccountName" $root }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
containers:
  - name: permafrost
    image: "{{ $root.Values.image.repository }}:{{ $root.Values.image.tag | default $root.Chart.AppVersion }}"
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      {{- toYaml .args | nindent 6 }}
    env:
      - name: PERMAFROST_CONFIG
        value: /etc/permafrost/permafrost.yaml
      - name: PERMAFROST_LOG
        value: {{ $root.Values.logLevel | quote }}
      {{- with $root.Values.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- if or $root.Values.secret.create $root.Values.existingSecret }}
    envFrom:
      - secretRef:
          name: {{ include "permafrost.secretName" $root }}
    {{- end }}
    {{- with .ports }}
    ports:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .probes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    resources:
      {{- toYaml $root.Values.resources | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.securityContext | nindent 6 }}
    volumeMounts:
      - name: config
        mountPath: /etc/permafrost
        readOnly: true
      - name: tmp
        mountPath: /tmp
volumes:
  - name: config
    configMap:
      name: {{ include "permafrost.configMapName" $root }}
  - name: tmp
    emptyDir: {}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
