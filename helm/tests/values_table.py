"""Prints the chart README's table of values from values.yaml: one row per
value with its default (compact JSON) and the `# --` comment above it (the
helm-docs convention). The chart test checks the README against values.yaml.

    python helm/tests/values_table.py > /tmp/table.md
"""

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[1] / "sesame"
WHOLE = ("resources", "requests", "limits")

# Descriptions of values that repeat (one per role) or explain themselves
# in a few words, where values.yaml has no `# --` comment of its own.
PATTERNS = [
    (r"image\.repository", "Image repository (built from deploy/Dockerfile)."),
    (r"image\.pullPolicy", "Kubernetes imagePullPolicy."),
    (r"imagePullSecrets", "Secrets for a private registry."),
    (r"(name|fullname)Override", "Overrides the chart name / the release's full name in resource names."),
    (r"serviceAccount\.create", "Create a ServiceAccount for the pods."),
    (r"serviceAccount\.annotations", "Annotations of the ServiceAccount (e.g. cloud IAM bindings)."),
    (r"serviceAccount\.automountToken", "Mount a Kubernetes API token (Sesame never calls the API)."),
    (r"commonLabels", "Labels added to every resource."),
    (r"podAnnotations", "Annotations added to every pod."),
    (r"podLabels", "Labels added to every pod."),
    (r"ports\.grpc", "gRPC port (tenant, device and rate-limit APIs, gRPC health)."),
    (r"ports\.admin", "Admin port: /metrics, /live, /ready."),
    (r"logLevel", "Log filter (`info`, `sesame=debug,info`, ...); logs are JSON."),
    (r"shutdown\.preStopSeconds", "preStop sleep before SIGTERM (0: none)."),
    (r"shutdown\.announceSeconds", "`shutdown_announce_seconds`: NOT_SERVING before the listener closes; at least readiness period x failure threshold."),
    (r"shutdown\.graceSeconds", "`shutdown_grace_seconds`: time for calls in flight, then for the dispatcher's pushes."),
    (r"scylla\.port", "Port added to contact points that name none."),
    (r"scylla\.keyspace", "Keyspace (created by the migrate Job)."),
    (r"scylla\.username", "ScyllaDB user (password from scylla.existingSecret)."),
    (r"(scylla|kafka\.sasl)\.passwordKey", "Key of the password in its Secret."),
    (r"(scylla|kafka)\.tls\.enabled", "TLS to the cluster."),
    (r"(scylla|kafka)\.tls\.existingSecret", "Secret with the CA (and client certificate and key for mutual TLS)."),
    (r"(scylla|kafka)\.tls\.caKey", "Key of the CA certificate (PEM) in the TLS Secret."),
    (r"(scylla|kafka)\.tls\.certKey", "Key of the client certificate (PEM), for mutual TLS; empty: none."),
    (r"(scylla|kafka)\.tls\.keyKey", "Key of the client private key (PEM), with certKey."),
    (r"kafka\.eventsPartitions", "Partitions of the events and dead-letter topics when created."),
    (r"kafka\.replicationFactor", "Replication factor of the topics Sesame creates."),
    (r"kafka\.sasl\.enabled", "SASL authentication to the brokers."),
    (r"kafka\.sasl\.username", "SASL user name."),
    (r"migrate\.backoffLimit", "Retries of the migrate Job (ScyllaDB may still be starting)."),
    (r"migrate\.activeDeadlineSeconds", "Longest the migrate Job may run."),
    (r"migrate\.resources", "Resources of the migrate Job."),
    (r"devTenant\.secretKey", "Key of the API key in its Secret."),
    (r"podSecurityContext\..*", "Pod security context (the schema requires runAsNonRoot)."),
    (r"securityContext\..*", "Container security context (the schema requires runAsNonRoot and no privilege escalation)."),
    (r"probes\.(startup|liveness|readiness)\.(\w+)", "Probe {1}."),
    (r"topologySpread\.enabled", "Spread each role's pods with topologySpreadConstraints."),
    (r"topologySpread\.maxSkew", "Largest difference in pods between two domains."),
    (r"topologySpread\.topologyKeys", "One constraint per node label."),
    (r"topologySpread\.whenUnsatisfiable", "`ScheduleAnyway` or `DoNotSchedule`."),
    (r"nodeSelector|tolerations|affinity", "Scheduling of every pod (a role's own setting wins)."),
    (r"priorityClassName", "PriorityClass of every pod."),
    (r"roles\.(\w+)\.enabled", "Run the {0} role."),
    (r"roles\.(\w+)\.replicas", "{0} replicas while its autoscaling is off."),
    (r"roles\.(\w+)\.resources", "{0} pod resources."),
    (r"roles\.(\w+)\.autoscaling\.enabled", "HorizontalPodAutoscaler for {0} (on CPU)."),
    (r"roles\.(\w+)\.autoscaling\.minReplicas", "Fewest {0} replicas (pre-scale here before a launch)."),
    (r"roles\.(\w+)\.autoscaling\.maxReplicas", "Most {0} replicas."),
    (r"roles\.(\w+)\.autoscaling\.targetCPUUtilizationPercentage", "Average CPU utilisation the {0} HPA aims at."),
    (r"roles\.(\w+)\.pdb\.enabled", "PodDisruptionBudget for {0}."),
    (r"roles\.(\w+)\.pdb\.maxUnavailable", "{0} pods a voluntary disruption may take at once."),
    (r"(roles\.(\w+)|embedded)\.service\.type", "Service type."),
    (r"(roles\.(\w+)|embedded)\.service\.annotations", "Service annotations (e.g. for a cloud load balancer)."),
    (r"(roles\.(\w+)|embedded)\.extraEnv", "Extra environment variables (`SESAME_*` overrides any setting)."),
    (r"roles\.(\w+)\.(nodeSelector|tolerations|affinity)", "Scheduling of the {0} pods."),
    (r"embedded\.resources", "Resources of the embedded pod."),
    (r"embedded\.persistence\.enabled", "Keep the store on a PersistentVolumeClaim (off: an emptyDir, lost with the pod)."),
    (r"embedded\.persistence\.size", "Size of the claim."),
    (r"embedded\.persistence\.storageClass", "StorageClass of the claim; empty: the cluster default."),
    (r"embedded\.persistence\.accessModes", "Access modes of the claim."),
    (r"metrics\.serviceMonitor\.interval", "Scrape interval."),
    (r"metrics\.(serviceMonitor|prometheusRule)\.labels", "Labels your Prometheus selects these by."),
]


def comments(text):
    """Maps each dotted key path to its `# --` comment."""
    out, stack, pending = {}, [], []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and pending:
            pending.append(stripped[1:].strip())
            continue
        m = re.match(r"^( *)([A-Za-z0-9_.-]+):", line)
        if not m:
            if not stripped:
                pending = []
            continue
        indent = len(m.group(1)) // 2
        stack = stack[:indent] + [m.group(2)]
        if pending:
            out[".".join(stack)] = " ".join(pending)
        pending = []
    return out


def leaves(prefix, v):
    if isinstance(v, dict) and v and not prefix.endswith(WHOLE):
        for k, sub in v.items():
            yield from leaves(f"{prefix}.{k}" if prefix else k, sub)
    else:
        yield prefix, v


def table():
    text = (CHART / "values.yaml").read_text()
    notes = comments(text)
    rows = ["| Value | Default | Description |", "|---|---|---|"]
    for key, default in leaves("", yaml.safe_load(text)):
        desc = notes.get(key, "")
        if not desc:
            for pattern, text in PATTERNS:
                m = re.fullmatch(pattern, key)
                if m:
                    desc = text.format(*[g or "" for g in m.groups()])
                    break
        desc = desc.replace("|", "\\|")
        rows.append(f"| `{key}` | `{json.dumps(default, separators=(',', ':'))}` | {desc} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table())
