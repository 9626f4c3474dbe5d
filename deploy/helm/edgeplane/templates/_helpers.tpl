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

{{/* The Secret (key `password`) of the user `edgeplane` on a cluster's shared broker the
     chart deploys. */}}
{{- define "edgeplane.brokerSecret" -}}
{{- (.manager.broker | default dict).passwordSecret | default (include "edgeplane.brokerName" .) -}}
{{- end -}}

{{/* The name of the shared broker the chart deploys for a cluster (DNS-1123). */}}
{{- define "edgeplane.brokerName" -}}
{{- printf "%s-broker" (.name | trunc 56 | trimSuffix "-") -}}
{{- end -}}

{{/* EDGEPLANE_BROKER of managers that share a broker: the URL given, the one in a
     Secret, or the chart's own Mosquitto with its password from its Secret. */}}
{{- define "edgeplane.brokerEnv" -}}
{{- $ := .root -}}
{{- $broker := .manager.broker | default dict -}}
{{- if $broker.url }}
- name: EDGEPLANE_BROKER
  value: {{ $broker.url | quote }}
{{- else if $broker.existingSecret }}
- name: EDGEPLANE_BROKER
  valueFrom:
    secretKeyRef:
      name: {{ $broker.existingSecret }}
      key: url
{{- else }}
- name: BROKER_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "edgeplane.brokerSecret" . }}
      key: password
- name: EDGEPLANE_BROKER
  value: {{ printf "%s://edgeplane:$(BROKER_PASSWORD)@%s:%v" (ternary "mqtts" "mqtt" $.Values.tls.enabled) (include "edgeplane.brokerName" .) (.manager.brokerPort | default 8883) | quote }}
{{- end }}
{{- end -}}

{{/* The Mosquitto several managers of one cluster share, and its workers dial: one user,
     `edgeplane`, whose password is in a Secret; no anonymous client. It runs from
     edgeplane's image (Mosquitto and mosquitto_passwd are in it). */}}
{{- define "edgeplane.sharedBroker" -}}
{{- $ := .root -}}
{{- $name := include "edgeplane.brokerName" . -}}
{{- $port := .manager.brokerPort | default 8883 -}}
{{- $broker := .manager.broker | default dict }}
{{- if not $broker.passwordSecret }}
{{- $old := lookup "v1" "Secret" $.Release.Namespace $name }}
---
# The password of the user `edgeplane` on cluster {{ .manager.clusterId }}'s shared broker.
apiVersion: v1
kind: Secret
metadata:
  name: {{ $name }}
  labels:
    {{- include "edgeplane.labels" $ | nindent 4 }}
  annotations:
    helm.sh/resource-policy: keep   # workers outside the release hold it
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
  type: {{ ((.manager.broker | default dict).service | default dict).type | default "ClusterIP" }}
  selector:
    app.kubernetes.io/name: {{ $name }}
  ports:
    - name: mqtt
      port: {{ $port }}
      targetPort: mqtt
---
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
                  name: {{ $broker.passwordSecret | default $name }}
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
