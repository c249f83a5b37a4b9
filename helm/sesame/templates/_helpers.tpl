{{/* Names ------------------------------------------------------------ */}}
{{- define "sesame.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sesame.fullname" -}}
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

{{/* The Deployment / Service name of one role: <fullname>-<role>; in
     embedded mode the single workload is <fullname>. Call with
     (dict "root" $ "role" "challenge"). */}}
{{- define "sesame.roleName" -}}
{{- if eq .role "all" -}}
{{- include "sesame.fullname" .root -}}
{{- else -}}
{{- printf "%s-%s" (include "sesame.fullname" .root | trunc 52 | trimSuffix "-") .role -}}
{{- end -}}
{{- end -}}

{{- define "sesame.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sesame.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels ----------------------------------------------------------- */}}
{{- define "sesame.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "sesame.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sesame
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one role (dict "root" $ "role" ...). */}}
{{- define "sesame.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sesame.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "sesame.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The roles this release runs: ["all"] in embedded mode, else the enabled ones. */}}
{{- define "sesame.roles" -}}
{{- if eq .Values.mode "embedded" -}}
{{- list "all" | toJson -}}
{{- else -}}
{{- $roles := list -}}
{{- range $r := list "challenge" "verifier" "dispatcher" "ratelimit" -}}
{{- if (index $.Values.roles $r).enabled -}}{{- $roles = append $roles $r -}}{{- end -}}
{{- end -}}
{{- toJson $roles -}}
{{- end -}}
{{- end -}}

{{/* TOML ------------------------------------------------------------- */}}
{{/* One value as TOML: tables become inline tables, so that the whole file
     is `key = value` lines. Helm reads every YAML number as a float; an
     integral one is written as an integer, which the server's typed
     configuration needs. */}}
{{- define "sesame.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "map" $v -}}
{{- $parts := list -}}
{{- range $k := keys $v | sortAlpha -}}
{{- $parts = append $parts (printf "%s = %s" (toJson $k) (include "sesame.tomlValue" (get $v $k))) -}}
{{- end -}}
{{- printf "{%s}" (join ", " $parts) -}}
{{- else if kindIs "slice" $v -}}
{{- $parts := list -}}
{{- range $e := $v -}}{{- $parts = append $parts (include "sesame.tomlValue" $e) -}}{{- end -}}
{{- printf "[%s]" (join ", " $parts) -}}
{{- else if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- ternary "true" "false" $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) -}}
{{- if eq (float64 $v) (floor $v) -}}{{- int64 $v -}}{{- else -}}{{- $v -}}{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) -}}
{{- $v -}}
{{- else -}}
{{- fail (printf "config: a value of kind %s cannot be written as TOML (null?)" (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/* Where mounted secrets live inside the pods. */}}
{{- define "sesame.secretDir" -}}/etc/sesame/secrets{{- end -}}

{{/* The server configuration (sesame.toml) as a dict. No secret values:
     only paths of mounted Secret files. */}}
{{- define "sesame.configDict" -}}
{{- $v := .Values -}}
{{- $fullname := include "sesame.fullname" . -}}
{{- $sec := include "sesame.secretDir" . -}}
{{- /* listen, admin_listen, data_dir and log_format are set as SESAME_*
       variables on the container (they would override a file anyway: the
       image sets them). */}}
{{- $c := dict
  "log_level" $v.logLevel
  "max_connection_age_seconds" (int $v.maxConnectionAgeSeconds)
  "dev_tenant" $v.devTenant.enabled
  "push_provider" $v.push.provider
  "shutdown_grace_seconds" (int $v.shutdown.graceSeconds)
  "shutdown_announce_seconds" (int $v.shutdown.announceSeconds)
-}}
{{- if $v.tenantAdmin.enabled -}}
{{- /* Read by the challenge role only, where the Secret is mounted. */ -}}
{{- $_ := set $c "admin_key_file" (printf "%s/admin/%s" $sec $v.tenantAdmin.secretKey) -}}
{{- end -}}
{{- with $v.webhook.sealKeySecret -}}
{{- /* Read by the challenge role only, where the Secret is mounted. */ -}}
{{- $_ := set $c "webhook" (dict "seal_key_file" (printf "%s/webhook-seal/%s" $sec $v.webhook.sealKeySecretKey)) -}}
{{- end -}}
{{- $deviceHost := ternary $fullname (printf "%s-verifier" ($fullname | trunc 52 | trimSuffix "-")) (eq $v.mode "embedded") -}}
{{- $scheme := ternary "https" "http" $v.tls.enabled -}}
{{- $_ := set $c "public_device_url" (default (printf "%s://%s.%s.svc:%d" $scheme $deviceHost .Release.Namespace (int $v.ports.grpc)) $v.publicDeviceUrl) -}}
{{- if $v.tls.enabled -}}
{{- /* Directories mounted from Secrets: renewed files appear in place and
       are re-read (tls.reload_seconds). */ -}}
{{- $tls := dict "cert" (printf "%s/tls/tls.crt" $sec) "key" (printf "%s/tls/tls.key" $sec) "admin" $v.tls.admin "server_ca" (printf "%s/tls/ca.crt" $sec) -}}
{{- with $v.tls.clientCaSecret }}{{- $_ := set $tls "client_ca" (printf "%s/tls-client-ca/ca.crt" $sec) -}}{{- end -}}
{{- if $v.tls.internalSecret -}}
{{- $_ := set $tls "internal_ca" (printf "%s/tls-internal/ca.crt" $sec) -}}
{{- $_ := set $tls "client_cert" (printf "%s/tls-internal/tls.crt" $sec) -}}
{{- $_ := set $tls "client_key" (printf "%s/tls-internal/tls.key" $sec) -}}
{{- end -}}
{{- $_ := set $c "tls" $tls -}}
{{- end -}}
{{- if eq $v.mode "embedded" -}}
{{- $_ := set $c "storage" "embedded" -}}
{{- $_ := set $c "queue" "memory" -}}
{{- $_ := set $c "durable_writes" $v.embedded.durableWrites -}}
{{- $_ := set $c "embedded_cache_mib" (int $v.embedded.cacheMiB) -}}
{{- else -}}
{{- $nodes := list -}}
{{- range $cp := $v.scylla.contactPoints -}}
{{- $nodes = append $nodes (ternary $cp (printf "%s:%d" $cp (int $v.scylla.port)) (contains ":" $cp)) -}}
{{- end -}}
{{- $_ := set $c "storage" (printf "scylla://%s/%s" (join "," $nodes) $v.scylla.keyspace) -}}
{{- $replication := dict -}}
{{- range $dc, $rf := $v.scylla.replication -}}{{- $_ := set $replication $dc (int $rf) -}}{{- end -}}
{{- $scylla := dict "local_datacenter" $v.scylla.localDatacenter "replication" $replication "username" $v.scylla.username -}}
{{- if $v.scylla.existingSecret -}}
{{- $_ := set $scylla "password_file" (printf "%s/scylla-auth/password" $sec) -}}
{{- end -}}
{{- if $v.scylla.tls.enabled -}}
{{- $tls := dict "enabled" true -}}
{{- if $v.scylla.tls.existingSecret -}}
{{- $_ := set $tls "ca_file" (printf "%s/scylla-tls/%s" $sec $v.scylla.tls.caKey) -}}
{{- if $v.scylla.tls.certKey -}}
{{- $_ := set $tls "cert_file" (printf "%s/scylla-tls/%s" $sec $v.scylla.tls.certKey) -}}
{{- $_ := set $tls "key_file" (printf "%s/scylla-tls/%s" $sec $v.scylla.tls.keyKey) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $scylla "tls" $tls -}}
{{- end -}}
{{- $_ := set $c "scylla" $scylla -}}
{{- $_ := set $c "queue" (printf "kafka://%s" (join "," $v.kafka.bootstrapServers)) -}}
{{- $props := dict -}}
{{- $k := $v.kafka -}}
{{- if or $k.tls.enabled $k.sasl.enabled -}}
{{- $_ := set $props "security.protocol" (printf "%s%s" (ternary "SASL_" "" $k.sasl.enabled) (ternary "SSL" "PLAINTEXT" $k.tls.enabled)) -}}
{{- end -}}
{{- if and $k.tls.enabled (not $k.tls.existingSecret) -}}
{{- /* Public CAs: the image's bundle (librdkafka would look for OpenSSL's default directory). */ -}}
{{- $_ := set $props "ssl.ca.location" "/etc/ssl/certs/ca-certificates.crt" -}}
{{- end -}}
{{- if and $k.tls.enabled $k.tls.existingSecret -}}
{{- $_ := set $props "ssl.ca.location" (printf "%s/kafka-tls/%s" $sec $k.tls.caKey) -}}
{{- if $k.tls.certKey -}}
{{- $_ := set $props "ssl.certificate.location" (printf "%s/kafka-tls/%s" $sec $k.tls.certKey) -}}
{{- $_ := set $props "ssl.key.location" (printf "%s/kafka-tls/%s" $sec $k.tls.keyKey) -}}
{{- end -}}
{{- end -}}
{{- if $k.sasl.enabled -}}
{{- $_ := set $props "sasl.mechanism" $k.sasl.mechanism -}}
{{- $_ := set $props "sasl.username" $k.sasl.username -}}
{{- end -}}
{{- $props = merge (deepCopy $k.properties) $props -}}
{{- $kafka := dict "push_partitions" (int $k.pushPartitions) "events_partitions" (int $k.eventsPartitions) "replication_factor" (int $k.replicationFactor) "properties" $props -}}
{{- if $k.sasl.enabled -}}
{{- $_ := set $kafka "sasl_password_file" (printf "%s/kafka-sasl/password" $sec) -}}
{{- end -}}
{{- $_ := set $c "kafka" $kafka -}}
{{- end -}}
{{- $apps := dict -}}
{{- range $id, $app := $v.push.apps -}}
{{- $a := dict "tenant" $app.tenant -}}
{{- if $app.apns -}}
{{- $apns := dict "topic" $app.apns.topic "key_id" $app.apns.keyId "team_id" $app.apns.teamId "key_file" (printf "%s/push/%s/%s" $sec $id (default "key.p8" $app.apns.keyKey)) -}}
{{- with $app.apns.baseUrl }}{{- $_ := set $apns "base_url" . -}}{{- end -}}
{{- $_ := set $a "platform" "ios" -}}
{{- $_ := set $a "apns" $apns -}}
{{- else -}}
{{- $fcm := dict "service_account_file" (printf "%s/push/%s/%s" $sec $id (default "service-account.json" $app.fcm.serviceAccountKey)) -}}
{{- with $app.fcm.baseUrl }}{{- $_ := set $fcm "base_url" . -}}{{- end -}}
{{- $_ := set $a "platform" "android" -}}
{{- $_ := set $a "fcm" $fcm -}}
{{- end -}}
{{- $_ := set $apps $id $a -}}
{{- end -}}
{{- if $apps -}}{{- $_ := set $c "push_apps" $apps -}}{{- end -}}
{{- $c = mergeOverwrite $c (deepCopy $v.config) -}}
{{- toJson $c -}}
{{- end -}}

{{- define "sesame.configToml" -}}
# Generated by the Sesame Helm chart from its values; secrets are files
# under {{ include "sesame.secretDir" . }}, never values here.
{{- $c := include "sesame.configDict" . | fromJson }}
{{- range $k := keys $c | sortAlpha }}
{{ toJson $k }} = {{ include "sesame.tomlValue" (get $c $k) }}
{{- end }}
{{ end -}}

{{/* Checks that values.schema.json cannot express. */}}
{{- define "sesame.validate" -}}
{{- $v := .Values -}}
{{- if and $v.tls.enabled (not $v.tls.existingSecret) -}}{{- fail "tls.enabled: tls.existingSecret must name the Secret with tls.crt and tls.key (e.g. from cert-manager)" -}}{{- end -}}
{{- if and (not $v.tls.enabled) (or $v.tls.clientCaSecret $v.tls.internalSecret) -}}{{- fail "tls.clientCaSecret / tls.internalSecret need tls.enabled: client certificates are only seen over TLS" -}}{{- end -}}
{{- if eq $v.mode "distributed" -}}
{{- if not $v.scylla.contactPoints -}}{{- fail "scylla.contactPoints is required in distributed mode (the ScyllaDB nodes, e.g. [scylla-0.scylla:9042]); or set mode=embedded for a trial" -}}{{- end -}}
{{- if not $v.scylla.localDatacenter -}}{{- fail "scylla.localDatacenter is required in distributed mode (the datacenter these pods run in, as ScyllaDB names it)" -}}{{- end -}}
{{- if not $v.kafka.bootstrapServers -}}{{- fail "kafka.bootstrapServers is required in distributed mode (e.g. [kafka-0.kafka:9092])" -}}{{- end -}}
{{- if and $v.migrate.enabled (not $v.scylla.replication) -}}{{- fail "scylla.replication is required when migrate.enabled (replication factor per datacenter, e.g. {eu-west: 3})" -}}{{- end -}}
{{- if and $v.scylla.existingSecret (not $v.scylla.username) -}}{{- fail "scylla.existingSecret is set: scylla.username must name the ScyllaDB user whose password it holds" -}}{{- end -}}
{{- if and $v.scylla.username (not $v.scylla.existingSecret) -}}{{- fail "scylla.username is set: scylla.existingSecret must name the Secret holding its password" -}}{{- end -}}
{{- if and $v.kafka.sasl.enabled (not $v.kafka.sasl.existingSecret) -}}{{- fail "kafka.sasl.enabled: kafka.sasl.existingSecret must name the Secret holding the SASL password" -}}{{- end -}}
{{- if and $v.kafka.sasl.enabled (not $v.kafka.sasl.username) -}}{{- fail "kafka.sasl.enabled: kafka.sasl.username is required" -}}{{- end -}}
{{- if and $v.kafka.tls.certKey (not $v.kafka.tls.keyKey) -}}{{- fail "kafka.tls.certKey is set: kafka.tls.keyKey must name the client key" -}}{{- end -}}
{{- if and $v.scylla.tls.certKey (not $v.scylla.tls.keyKey) -}}{{- fail "scylla.tls.certKey is set: scylla.tls.keyKey must name the client key" -}}{{- end -}}
{{- if eq (include "sesame.roles" . ) "[]" -}}{{- fail "roles: every role is disabled; enable at least one" -}}{{- end -}}
{{- if and $v.roles.dispatcher.autoscaling.enabled (gt (int $v.roles.dispatcher.autoscaling.maxReplicas) (int $v.kafka.pushPartitions)) -}}{{- fail (printf "roles.dispatcher.autoscaling.maxReplicas (%d) is above kafka.pushPartitions (%d): the extra dispatchers would get no partition" (int $v.roles.dispatcher.autoscaling.maxReplicas) (int $v.kafka.pushPartitions)) -}}{{- end -}}
{{- end -}}
{{- /* Secrets never go into the ConfigMap through `config`. */ -}}
{{- if hasKey $v.config "push_apps" -}}{{- fail "config.push_apps: configure push apps with push.apps (credentials come from Secrets), not config" -}}{{- end -}}
{{- range $key, $_ := (default dict (default dict $v.config.kafka).properties) -}}
{{- if regexMatch "(?i)password|secret|jaas" $key -}}{{- fail (printf "config.kafka.properties.%s: no secrets in config (it is rendered into a ConfigMap); use kafka.sasl.existingSecret" $key) -}}{{- end -}}
{{- end -}}
{{- range $key := list "dev_tenant_key" "admin_key_file" "listen" "admin_listen" "data_dir" "log_format" "storage" "queue" "tls" -}}
{{- if hasKey $v.config $key -}}{{- fail (printf "config.%s is set by the chart (from its own values); remove it from config" $key) -}}{{- end -}}
{{- end -}}
{{- if and (eq $v.push.provider "simulator") $v.push.apps -}}{{- fail "push.apps are configured but push.provider is simulator: set push.provider=apns_fcm" -}}{{- end -}}
{{- if and (eq $v.push.provider "apns_fcm") (not $v.push.apps) -}}{{- fail "push.provider=apns_fcm needs push.apps (each tenant app's APNs key or FCM service account)" -}}{{- end -}}
{{- range $id, $app := $v.push.apps -}}
{{- if not (or $app.apns $app.fcm) -}}{{- fail (printf "push.apps.%s: give apns or fcm" $id) -}}{{- end -}}
{{- if and $app.apns $app.fcm -}}{{- fail (printf "push.apps.%s: one platform per app, apns or fcm, not both" $id) -}}{{- end -}}
{{- $s := (default dict (default $app.fcm $app.apns)).existingSecret -}}
{{- if not $s -}}{{- fail (printf "push.apps.%s: existingSecret is required (the Secret holding its %s)" $id (ternary "APNs .p8 key" "FCM service-account JSON" (not (empty $app.apns)))) -}}{{- end -}}
{{- end -}}
{{- end -}}
