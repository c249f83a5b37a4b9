{{/* The pod template of one role: (dict "root" $ "role" "challenge"), or
     role "all" in embedded mode. */}}
{{- define "sesame.podTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $role := .role -}}
{{- $rv := ternary $v.embedded (index $v.roles $role | default dict) (eq $role "all") -}}
{{- $sec := include "sesame.secretDir" $root -}}
{{- $usesStorage := ne $role "dispatcher" -}}
{{- $pushes := or (eq $role "dispatcher") (eq $role "all") -}}
{{- $distributed := eq $v.mode "distributed" -}}
{{- $adminScheme := ternary "HTTPS" "HTTP" (and $v.tls.enabled $v.tls.admin) -}}
metadata:
  labels:
    {{- include "sesame.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $role }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # Roll the pods when the configuration changes.
    checksum/config: {{ include "sesame.configToml" $root | sha256sum }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "sesame.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $v.serviceAccount.automountToken }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  # preStop sleep + shutdown announce + two grace periods (calls in flight,
  # then the dispatcher's pushes) + 5 s of margin.
  terminationGracePeriodSeconds: {{ add (int $v.shutdown.preStopSeconds) (int $v.shutdown.announceSeconds) (mul 2 (int $v.shutdown.graceSeconds)) 5 }}
  {{- if $v.topologySpread.enabled }}
  topologySpreadConstraints:
    {{- range $key := $v.topologySpread.topologyKeys }}
    - maxSkew: {{ $v.topologySpread.maxSkew }}
      topologyKey: {{ $key }}
      whenUnsatisfiable: {{ $v.topologySpread.whenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "sesame.selectorLabels" (dict "root" $root "role" $role) | nindent 10 }}
      matchLabelKeys: [pod-template-hash]
    {{- end }}
  {{- end }}
  {{- with (default $v.nodeSelector $rv.nodeSelector) }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with (default $v.tolerations $rv.tolerations) }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with (default $v.affinity $rv.affinity) }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: sesame
      image: {{ include "sesame.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args:
        - serve
        - --config=/etc/sesame/config/sesame.toml
        - --roles={{ $role }}
      env:
        # Set here, not in the ConfigMap: the image's own SESAME_* defaults
        # would override the file.
        - name: SESAME_LISTEN
          value: {{ printf "0.0.0.0:%d" (int $v.ports.grpc) | quote }}
        - name: SESAME_ADMIN_LISTEN
          value: {{ printf "0.0.0.0:%d" (int $v.ports.admin) | quote }}
        - name: SESAME_DATA_DIR
          value: /data
        - name: SESAME_LOG_FORMAT
          value: json
        {{- if and $v.devTenant.enabled (or (eq $role "challenge") (eq $role "all")) }}
        # The dev tenant's key, from a Secret: every replica accepts the same one.
        - name: SESAME_DEV_TENANT_KEY
          valueFrom:
            secretKeyRef:
              name: {{ default (printf "%s-dev-tenant" (include "sesame.fullname" $root)) $v.devTenant.existingSecret }}
              key: {{ $v.devTenant.secretKey }}
        {{- end }}
        {{- if and $distributed (eq $role "dispatcher") (eq $v.push.provider "simulator") }}
        # Simulated pushes land in the verifiers' phone inboxes.
        - name: SESAME_SIMULATOR_URL
          value: {{ printf "%s://%s.%s.svc:%d" (ternary "https" "http" $v.tls.enabled) (include "sesame.roleName" (dict "root" $root "role" "verifier")) $root.Release.Namespace (int $v.ports.grpc) | quote }}
        {{- end }}
        # Each replica reports its quota usage under its own name.
        - name: SESAME_INSTANCE_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- with $rv.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: grpc
          containerPort: {{ $v.ports.grpc }}
          protocol: TCP
        - name: admin
          containerPort: {{ $v.ports.admin }}
          protocol: TCP
      startupProbe:
        httpGet:
          path: /live
          port: admin
          scheme: {{ $adminScheme }}
        periodSeconds: {{ $v.probes.startup.periodSeconds }}
        failureThreshold: {{ $v.probes.startup.failureThreshold }}
        timeoutSeconds: {{ $v.probes.startup.timeoutSeconds }}
      livenessProbe:
        httpGet:
          path: /live
          port: admin
          scheme: {{ $adminScheme }}
        periodSeconds: {{ $v.probes.liveness.periodSeconds }}
        failureThreshold: {{ $v.probes.liveness.failureThreshold }}
        timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
      readinessProbe:
        {{- if or (eq $role "dispatcher") $v.tls.enabled }}
        # A dispatcher serves no calls: it is ready while a Kafka broker
        # answers and it is not draining (/ready). Over TLS every role uses
        # /ready (also 503 while draining): the kubelet's gRPC probe has no TLS.
        httpGet:
          path: /ready
          port: admin
          scheme: {{ $adminScheme }}
        {{- else }}
        # gRPC health: NOT_SERVING from the moment the pod starts draining.
        grpc:
          port: {{ $v.ports.grpc }}
        {{- end }}
        periodSeconds: {{ $v.probes.readiness.periodSeconds }}
        failureThreshold: {{ $v.probes.readiness.failureThreshold }}
        timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
      {{- if gt (int $v.shutdown.preStopSeconds) 0 }}
      lifecycle:
        preStop:
          sleep:
            seconds: {{ $v.shutdown.preStopSeconds }}
      {{- end }}
      resources:
        {{- toYaml $rv.resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/sesame/config
          readOnly: true
        - name: data
          mountPath: /data
        - name: tmp
          mountPath: /tmp
        {{- if and $distributed $usesStorage $v.scylla.existingSecret }}
        - name: scylla-auth
          mountPath: {{ $sec }}/scylla-auth
          readOnly: true
        {{- end }}
        {{- if and $distributed $usesStorage $v.scylla.tls.enabled $v.scylla.tls.existingSecret }}
        - name: scylla-tls
          mountPath: {{ $sec }}/scylla-tls
          readOnly: true
        {{- end }}
        {{- if and $distributed $v.kafka.tls.enabled $v.kafka.tls.existingSecret }}
        - name: kafka-tls
          mountPath: {{ $sec }}/kafka-tls
          readOnly: true
        {{- end }}
        {{- if and $distributed $v.kafka.sasl.enabled }}
        - name: kafka-sasl
          mountPath: {{ $sec }}/kafka-sasl
          readOnly: true
        {{- end }}
        {{- if and $v.tenantAdmin.enabled (or (eq $role "challenge") (eq $role "all")) }}
        - name: admin-key
          mountPath: {{ $sec }}/admin
          readOnly: true
        {{- end }}
        {{- if and $v.webhook.sealKeySecret (or (eq $role "challenge") (eq $role "all")) }}
        - name: webhook-seal
          mountPath: {{ $sec }}/webhook-seal
          readOnly: true
        {{- end }}
        {{- if $v.tls.enabled }}
        # Whole directories (no subPath): renewed Secrets update in place.
        - name: tls
          mountPath: {{ $sec }}/tls
          readOnly: true
        {{- with $v.tls.clientCaSecret }}
        - name: tls-client-ca
          mountPath: {{ $sec }}/tls-client-ca
          readOnly: true
        {{- end }}
        {{- with $v.tls.internalSecret }}
        - name: tls-internal
          mountPath: {{ $sec }}/tls-internal
          readOnly: true
        {{- end }}
        {{- end }}
        {{- if $pushes }}
        {{- range $id, $app := $v.push.apps }}
        - name: push-{{ $id }}
          mountPath: {{ $sec }}/push/{{ $id }}
          readOnly: true
        {{- end }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "sesame.fullname" $root }}-config
    - name: data
      {{- if and (eq $role "all") $v.embedded.persistence.enabled }}
      persistentVolumeClaim:
        claimName: {{ default (printf "%s-data" (include "sesame.fullname" $root)) $v.embedded.persistence.existingClaim }}
      {{- else if eq $role "all" }}
      # No persistence asked for: the store lives and dies with the pod.
      emptyDir: {}
      {{- else }}
      emptyDir:
        sizeLimit: 64Mi
      {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if and $distributed $usesStorage $v.scylla.existingSecret }}
    - name: scylla-auth
      secret:
        secretName: {{ $v.scylla.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ $v.scylla.passwordKey }}
            path: password
    {{- end }}
    {{- if and $distributed $usesStorage $v.scylla.tls.enabled $v.scylla.tls.existingSecret }}
    - name: scylla-tls
      secret:
        secretName: {{ $v.scylla.tls.existingSecret }}
        defaultMode: 0440
    {{- end }}
    {{- if and $distributed $v.kafka.tls.enabled $v.kafka.tls.existingSecret }}
    - name: kafka-tls
      secret:
        secretName: {{ $v.kafka.tls.existingSecret }}
        defaultMode: 0440
    {{- end }}
    {{- if and $distributed $v.kafka.sasl.enabled }}
    - name: kafka-sasl
      secret:
        secretName: {{ $v.kafka.sasl.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ $v.kafka.sasl.passwordKey }}
            path: password
    {{- end }}
    {{- if and $v.tenantAdmin.enabled (or (eq $role "challenge") (eq $role "all")) }}
    - name: admin-key
      secret:
        secretName: {{ default (printf "%s-admin" (include "sesame.fullname" $root)) $v.tenantAdmin.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ $v.tenantAdmin.secretKey }}
            path: {{ $v.tenantAdmin.secretKey }}
    {{- end }}
    {{- if and $v.webhook.sealKeySecret (or (eq $role "challenge") (eq $role "all")) }}
    - name: webhook-seal
      secret:
        secretName: {{ $v.webhook.sealKeySecret }}
        defaultMode: 0440
        items:
          - key: {{ $v.webhook.sealKeySecretKey }}
            path: {{ $v.webhook.sealKeySecretKey }}
    {{- end }}
    {{- if $v.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ $v.tls.existingSecret }}
        defaultMode: 0440
    {{- with $v.tls.clientCaSecret }}
    - name: tls-client-ca
      secret:
        secretName: {{ . }}
        defaultMode: 0440
    {{- end }}
    {{- with $v.tls.internalSecret }}
    - name: tls-internal
      secret:
        secretName: {{ . }}
        defaultMode: 0440
    {{- end }}
    {{- end }}
    {{- if $pushes }}
    {{- range $id, $app := $v.push.apps }}
    - name: push-{{ $id }}
      secret:
        {{- if $app.apns }}
        secretName: {{ $app.apns.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ default "key.p8" $app.apns.keyKey }}
            path: {{ default "key.p8" $app.apns.keyKey }}
        {{- else }}
        secretName: {{ $app.fcm.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ default "service-account.json" $app.fcm.serviceAccountKey }}
            path: {{ default "service-account.json" $app.fcm.serviceAccountKey }}
        {{- end }}
    {{- end }}
    {{- end }}
{{- end -}}
