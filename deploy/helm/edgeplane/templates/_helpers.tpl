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

{{/* The Secret (key `credentials.json`) of a cluster's identity at the root that its
     several managers share (managers[].replicas > 1 under a root). */}}
{{- define "edgeplane.identitySecret" -}}
{{- .manager.identitySecret | default (printf "%s-identity" (include "edgeplane.managerName" .)) -}}
{{- end -}}

{{/* The name of the shared broker the chart deploys for a cluster's managers (DNS-1123). */}}
{{- define "edgeplane.brokerName" -}}
{{- printf "%s-broker" (.name | trunc 56 | trimSuffix "-") -}}
{{- end -}}

{{/* The Secret (key `password`) of the user `edgeplane` on a shared broker the chart
     deploys: .broker.passwordSecret, else one of the broker's own name (.name). */}}
{{- define "edgeplane.brokerSecret" -}}
{{- (.broker | default dict).passwordSecret | default .name -}}
{{- end -}}

{{/* The variable .var (EDGEPLANE_BROKER, EDGEPLANE_ROOT) of processes that share a broker:
     .broker.url, the URL in the Secret .broker.existingSecret, or the chart's Mosquitto
     .name at .port with its password (variable .passwordVar) from its Secret. */}}
{{- define "edgeplane.brokerEnv" -}}
{{- $ := .root -}}
{{- $broker := .broker | default dict -}}
{{- if $broker.url }}
- name: {{ .var }}
  value: {{ $broker.url | quote }}
{{- else if $broker.existingSecret }}
- name: {{ .var }}
  valueFrom:
    secretKeyRef:
      name: {{ $broker.existingSecret }}
      key: url
{{- else }}
- name: {{ .passwordVar }}
  valueFrom:
    secretKeyRef:
      name: {{ include "edgeplane.brokerSecret" . }}
      key: password
- name: {{ .var }}
  value: {{ printf "%s://edgeplane:$(%s)@%s:%v" (ternary "mqtts" "mqtt" $.Values.tls.enabled) .passwordVar .name .port | quote }}
{{- end }}
{{- end -}}

{{/* A Mosquitto that several processes share (a cluster's managers and its workers, or
     the roots and the managers): .name at .port, for .for; one user, `edgeplane`, whose
     password is in a Secret; no anonymous client. It runs from edgeplane's image
     (Mosquitto and mosquitto_passwd are in it). */}}
{{- define "edgeplane.sharedBroker" -}}
{{- $ := .root -}}
{{- $name := .name -}}
{{- $port := .port -}}
{{- $broker := .broker | default dict }}
{{- if not $broker.passwordSecret }}
{{- $old := lookup "v1" "Secret" $.Release.Namespace $name }}
---
# The password of the user `edgeplane` on the broker {{ .for }} share.
apiVersion: v1
kind: Secret
metadata:
  name: {{ $name }}
  labels:
    {{- include "edgeplane.labels" $ | nindent 4 }}
  annotations:
    helm.sh/resource-policy: keep   # clients outside the release hold it
type: Opaque
data:
  {{- if and $old $old.data }}
  password: {{ index $old.data "password" }}
  {{- else }}
  password: {{ randAlphaNum 32 | b64enc }}
  {{- end }}
{{- end }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $name }}
  labels:
    {{- include "edgeplane.labels" $ | nindent 4 }}
data:
  mosquitto.conf: |
    listener {{ $port }} 0.0.0.0
    {{- if $.Values.tls.enabled }}
    certfile /etc/edgeplane/tls/server.pem
    keyfile /etc/edgeplane/tls/server.key
    {{- end }}
    allow_anonymous false
    password_file /tmp/passwd
    persistence false
    set_tcp_nodelay true
    # edgeplane relies on QoS 1 messages arriving under a burst of dispatches
    max_queued_messages 100000
    max_inflight_messages 0
    log_dest stdout
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  labels:
    {{- include "edgeplane.labels" $ | nindent 4 }}
spec:
  type: {{ ($broker.service | default dict).type | default "ClusterIP" }}
  selector:
    app.kubernetes.io/name: {{ $name }}
  ports:
    - name: mqtt
      port: {{ $port }}
      targetPort: mqtt
---
# The broker {{ .for }} share.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "edgeplane.labels" $ | nindent 4 }}
spec:
  replicas: 1
  strategy:
    type: Recreate
  selector:
    matchLabels:
      app.kubernetes.io/name: {{ $name }}
  template:
    metadata:
      labels:
        app.kubernetes.io/name: {{ $name }}
        app.kubernetes.io/component: broker
        {{- include "edgeplane.labels" $ | nindent 8 }}
    spec:
      {{- include "edgeplane.podSecurity" $ | nindent 6 }}
      containers:
        - name: mosquitto
          image: {{ printf "%s:%s" $.Values.image.repository $.Values.image.tag | quote }}
          imagePullPolicy: {{ $.Values.image.pullPolicy }}
          # the password file is made from the Secret at each start (hashed, in /tmp)
          command: ["sh", "-c"]
          args:
            - mosquitto_passwd -c -b /tmp/passwd edgeplane "$BROKER_PASSWORD" && exec mosquitto -c /etc/mosquitto-edgeplane/mosquitto.conf
          env:
            - name: BROKER_PASSWORD
              valueFrom:
                secretKeyRef:
                  name: {{ include "edgeplane.brokerSecret" . }}
                  key: password
          ports:
            - name: mqtt
              containerPort: {{ $port }}
          readinessProbe:
            tcpSocket:
              port: mqtt
            periodSeconds: 5
          livenessProbe:
            tcpSocket:
              port: mqtt
            initialDelaySeconds: 10
            periodSeconds: 10
          resources:
            {{- toYaml ($broker.resources | default (dict "requests" (dict "cpu" "50m" "memory" "32Mi"))) | nindent 12 }}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: [ALL]
          volumeMounts:
            - name: config
              mountPath: /etc/mosquitto-edgeplane
              readOnly: true
            - name: tmp
              mountPath: /tmp
            {{- if $.Values.tls.enabled }}
            - name: tls
              mountPath: /etc/edgeplane/tls
              readOnly: true
            {{- end }}
      volumes:
        - name: config
          configMap:
            name: {{ $name }}
        - name: tmp
          emptyDir: {}
        {{- if $.Values.tls.enabled }}
        - name: tls
          secret:
            secretName: {{ $.Values.tls.secretName }}
            defaultMode: 0440
        {{- end }}
{{- end -}}

{{/* Several roots (root.replicas above 1) share a broker: the arguments of the dict the
     shared-broker templates take for it. */}}
{{- define "edgeplane.rootBroker" -}}
{{- $name := printf "%s-root-broker" (include "edgeplane.fullname" .) -}}
{{- toJson (dict "name" $name "port" .Values.root.brokerPort "broker" (.Values.root.broker | default dict) "var" "EDGEPLANE_ROOT" "passwordVar" "ROOT_BROKER_PASSWORD" "for" "the roots and the managers") -}}
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
{{- if .claim }}
    persistentVolumeClaim:
      claimName: {{ .claim }}
{{- else }}
    emptyDir: {}
{{- end }}
  - name: tmp
    emptyDir: {}
{{- if .root.Values.tls.enabled }}
  - name: tls
    secret:
      secretName: {{ .root.Values.tls.secretName }}
      defaultMode: 0440
{{- end }}
{{- end -}}
