{{/*
Names, labels, the image, the hardened security contexts and the object names the components and
the RBAC share. Every template takes its component's name through these helpers, so an object's
name is always <fullname>-<component> and its labels always carry the instance and the component.
*/}}

{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "herald.fullname" -}}
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

{{/* <fullname>-<component>: takes (list $ "server"). */}}
{{- define "herald.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "herald.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The labels that select a component's pods: takes (list $ "server"). */}}
{{- define "herald.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "herald.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Every object's labels: takes (list $ "server"); a component's extra labels included. */}}
{{- define "herald.labels" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{ include "herald.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: herald
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- $values := index $root.Values $component | default dict -}}
{{- with $values.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "herald.image" -}}
{{- $image := .Values.image -}}
{{- $repository := $image.repository -}}
{{- if $image.registry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" $image.registry) $image.repository -}}
{{- end -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The names the components agree on and the RBAC narrows to (files/rbac.yaml's placeholders).
Rendered as YAML; read back with fromYaml.
*/}}
{{- define "herald.objectNames" -}}
{{- $fullname := include "herald.fullname" . -}}
caSecret: {{ default (printf "%s-ca" $fullname) .Values.server.caSecretName }}
bundleConfigMap: {{ default (printf "%s-bundle" $fullname) .Values.server.bundleConfigMapName }}
leaderLease: {{ printf "%s-server-leader" $fullname }}
peering: {{ printf "%s-operator" $fullname }}
upstreamSecret: {{ .Values.server.upstream.secretName | quote }}
{{- end -}}

{{/* The server's Service name and the address agents dial. */}}
{{- define "herald.serverHost" -}}
{{- printf "%s.%s.svc" (include "herald.componentName" (list . "server")) .Release.Namespace -}}
{{- end -}}

{{/* Pod-level securityContext: non-root, seccomp RuntimeDefault. Takes the uid. */}}
{{- define "herald.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container securityContext: read-only root, no capabilities, no privilege escalation. */}}
{{- define "herald.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Spread a component's replicas across nodes: takes (list $ "server"). */}}
{{- define "herald.topologySpread" -}}
{{- $root := index . 0 -}}
{{- $values := index $root.Values (index . 1) -}}
{{- if $values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: {{ $values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "herald.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end -}}

{{/* Scheduling and pull settings every pod takes from its component's values. */}}
{{- define "herald.podScheduling" -}}
{{- $root := index . 0 -}}
{{- $values := index $root.Values (index . 1) -}}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* HTTP probes on the component's health port. Takes the port name. */}}
{{- define "herald.probes" -}}
startupProbe:
  httpGet: {path: /live, port: {{ . }}}
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet: {path: /live, port: {{ . }}}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /ready, port: {{ . }}}
  periodSeconds: 5
  failureThreshold: 2
{{- end -}}

{{/*
Signing workers: the value when set, else the CPU limit rounded up ("1500m" -> 2, "2" -> 2), else
0 (one signing thread). cryptography holds the GIL while signing, so one process uses one core.
*/}}
{{- define "herald.signingWorkers" -}}
{{- $workers := .Values.server.signingWorkers -}}
{{- if kindIs "invalid" $workers -}}
{{- $cpu := "" -}}
{{- with .Values.server.resources.limits -}}{{- $cpu = toString (.cpu | default "") -}}{{- end -}}
{{- if eq $cpu "" -}}
0
{{- else if hasSuffix "m" $cpu -}}
{{- $milli := trimSuffix "m" $cpu | float64 -}}
{{- divf $milli 1000 | ceil | int | max 1 | min 64 -}}
{{- else -}}
{{- $cpu | float64 | ceil | int | max 1 | min 64 -}}
{{- end -}}
{{- else -}}
{{- $workers | int -}}
{{- end -}}
{{- end -}}
