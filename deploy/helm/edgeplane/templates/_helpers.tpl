{{- define "edgeplane.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "edgeplane.labels" -}}
app.kubernetes.io/part-of: edgeplane
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "edgeplane.postgresSecret" -}}
{{- .Values.postgresql.existingSecret | default (printf "%s-postgres" (include "edgeplane.fullname" .)) -}}
{{- end -}}

{{/* A manager's resource name from its cluster id (DNS-1123). */}}
{{- define "edgeplane.managerName" -}}
{{- $id := regexReplaceAll "[^a-z0-9-]" (.manager.clusterId | lower) "-" -}}
{{- printf "%s-manager-%s" (include "edgeplane.fullname" .root) $id | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret (key `token`) a manager's join token at the root comes from. */}}
{{- define "edgeplane.joinSecret" -}}
{{- .manager.joinSecret | default (printf "%s-join" (include "edgeplane.managerName" .)) -}}
{{- end -}}

{{/* The store URL's environment: PostgreSQL's password from its Secret, a schema each. */}}
{{- define "edgeplane.storeEnv" -}}
{{- $ := .root -}}
{{- if $.Values.postgresql.enabled }}
- name: POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "edgeplane.postgresSecret" $ }}
      key: password
- name: EDGEPLANE_STORE
  value: {{ printf "postgresql://edgeplane:$(POSTGRES_PASSWORD)@%s-postgres:5432/edgeplane?schema=%s" (include "edgeplane.fullname" $) .schema | quote }}
{{- else }}
- name: STORE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "store.existingSecret: a Secret whose key `url` is postgresql://USER:PASSWORD@HOST/DB (or postgresql.enabled: true)" $.Values.store.existingSecret }}
      key: url
- name: EDGEPLANE_STORE
  value: {{ printf "$(STORE_URL)?schema=%s" .schema | quote }}
{{- end }}
{{- if $.Values.adminToken.existingSecret }}
- name: EDGEPLANE_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.adminToken.existingSecret }}
      key: token
{{- end }}
{{- end -}}

{{- define "edgeplane.tlsArgs" -}}
{{- if .Values.tls.enabled }}
- --tls-cert
- /etc/edgeplane/tls/server.pem
- --tls-key
- /etc/edgeplane/tls/server.key
- --ca
- /etc/edgeplane/tls/ca.pem
{{- else }}
- --insecure
{{- end }}
{{- end -}}

{{/* What the root's and the managers' pods share. */}}
{{- define "edgeplane.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "edgeplane.containerCommon" -}}
readinessProbe:   # 503 while the store cannot be reached
  httpGet:
    path: /healthz
    port: api
    scheme: {{ if .Values.tls.enabled }}HTTPS{{ else }}HTTP{{ end }}
  periodSeconds: 5
livenessProbe:    # the process serves; a store outage is no reason to restart it
  tcpSocket:
    port: api
  initialDelaySeconds: 10
  periodSeconds: 10
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
volumeMounts:
  - name: data
    mountPath: /var/lib/edgeplane
  - name: tmp
    mountPath: /tmp
{{- if .Values.tls.enabled }}
  - name: tls
    mountPath: /etc/edgeplane/tls
    readOnly: true
{{- end }}
{{- end -}}

{{- define "edgeplane.volumes" -}}
volumes:
  - name: data
    persistentVolumeClaim:
      claimName: {{ .claim }}
  - name: tmp
    emptyDir: {}
{{- if .root.Values.tls.enabled }}
  - name: tls
    secret:
      secretName: {{ .root.Values.tls.secretName }}
      defaultMode: 0440
{{- end }}
{{- end -}}
