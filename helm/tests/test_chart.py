"""The Helm chart, rendered by Helm's own Go engine (helm-python-sdk), linted,
and every manifest validated against Kubernetes' JSON schemas
(kubernetes-validate), for several realistic value sets; then the properties
operators rely on, and bad values that must fail with a clear message.

Run by scripts/test-deploy.sh (the README's test command):
    SESAME_BIN=target/debug/sesame python -m unittest discover -s helm/tests
"""

import base64
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import helm_python
import kubernetes_validate
import yaml

# deploy/tests/dockerfile.py: the image's ENV, shared with the compose tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy" / "tests"))
from dockerfile import runtime_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "sesame"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a
# recent one; both schema sets are bundled in the pinned kubernetes-validate.
K8S_VERSIONS = ["1.30.0", "1.34.0"]
SESAME_BIN = os.environ.get("SESAME_BIN", "")
NAMESPACE = "auth"
RELEASE = "sesame"
# Kinds whose schemas are CustomResourceDefinitions (prometheus-operator),
# not part of Kubernetes: checked field by field below instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

DISTRIBUTED = {
    "mode": "distributed",
    "scylla": {
        "contactPoints": ["scylla-0.scylla", "scylla-1.scylla:9142"],
        "localDatacenter": "eu-west",
        "replication": {"eu-west": 3, "eu-central": 3},
    },
    "kafka": {"bootstrapServers": ["kafka-0.kafka:9092", "kafka-1.kafka:9092"]},
}


def merged(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merged(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


VALUE_SETS = {
    "defaults": {},
    "embedded-trial": {
        "mode": "embedded",
        "embedded": {"persistence": {"size": "20Gi", "storageClass": "fast-ssd"}},
        "devTenant": {"existingSecret": "sesame-trial-key"},
        "publicDeviceUrl": "https://sesame-trial.example.com",
    },
    "distributed": DISTRIBUTED,
    "distributed-tls-sasl": merged(
        DISTRIBUTED,
        {
            "publicDeviceUrl": "https://device.auth.example.eu",
            "image": {"digest": "sha256:" + "ab" * 32},
            "scylla": {
                "username": "sesame",
                "existingSecret": "scylla-auth",
                "tls": {
                    "enabled": True,
                    "existingSecret": "scylla-tls",
                    "certKey": "tls.crt",
                    "keyKey": "tls.key",
                },
            },
            "kafka": {
                "pushPartitions": 24,
                "tls": {"enabled": True, "existingSecret": "kafka-ca"},
                "sasl": {
                    "enabled": True,
                    "username": "sesame",
                    "existingSecret": "kafka-sasl",
                },
                "properties": {"compression.type": "lz4"},
            },
            "push": {
                "provider": "apns_fcm",
                "apps": {
                    "bank-ios": {
                        "tenant": "bank",
                        "apns": {
                            "topic": "eu.bank.app",
                            "keyId": "ABC123DEFG",
                            "teamId": "TEAM123456",
                            "existingSecret": "bank-apns",
                        },
                    },
                    "bank-android": {
                        "tenant": "bank",
                        "fcm": {"existingSecret": "bank-fcm"},
                    },
                },
            },
            "devTenant": {"enabled": False},
            "tenantAdmin": {"existingSecret": "sesame-admin"},
            "webhook": {"sealKeySecret": "webhook-seal"},
            "tls": {
                "enabled": True,
                "existingSecret": "sesame-tls",
                "clientCaSecret": "tenant-ca",
                "internalSecret": "sesame-internal",
            },
            "metrics": {
                "serviceMonitor": {
                    "enabled": True,
                    "labels": {"release": "kube-prometheus"},
                    "tlsConfig": {"ca": {"secret": {"name": "sesame-tls", "key": "ca.crt"}}, "serverName": "sesame.auth.svc"},
                },
                "prometheusRule": {"enabled": True},
            },
            "config": {"guard": {"defaults": {"max_prompts": 5}}, "admission": {"max_limit": 2000}},
        },
    ),
    "autoscaling-off": merged(
        DISTRIBUTED,
        {
            "roles": {
                r: {"autoscaling": {"enabled": False}, "replicas": n}
                for r, n in [("challenge", 6), ("verifier", 6), ("dispatcher", 4), ("ratelimit", 2)]
            },
            "migrate": {"enabled": False},
        },
    ),
    "network-policy": merged(
        DISTRIBUTED,
        {
            "roles": {"ratelimit": {"enabled": False}},
            "networkPolicy": {
                "enabled": True,
                "tenantApiFrom": [{"namespaceSelector": {"matchLabels": {"name": "keycloak"}}}],
                "deviceApiFrom": [{"namespaceSelector": {"matchLabels": {"name": "ingress-nginx"}}}],
                "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
                "egressTo": [
                    {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]},
                    {"ports": [{"port": 443, "protocol": "TCP"}]},
                ],
            },
        },
    ),
}


def render(values):
    chart = helm_python.Chart.load(str(CHART))
    return chart.render(values, name=RELEASE, namespace=NAMESPACE)


def documents(rendered):
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs


def binary_defaults():
    """The binary's own default configuration, as it prints it."""
    out = subprocess.run(
        [SESAME_BIN, "check-config"], check=True, capture_output=True, text=True,
        env={"PATH": os.environ.get("PATH", "")},
    ).stdout
    return out


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


class ChartRenders(unittest.TestCase):
    """Every value set renders, lints clean and validates against Kubernetes."""

    @classmethod
    def setUpClass(cls):
        cls.rendered = {name: render(values) for name, values in VALUE_SETS.items()}
        cls.docs = {name: documents(r) for name, r in cls.rendered.items()}

    def test_lint_is_clean_for_every_value_set(self):
        for name, values in VALUE_SETS.items():
            for version in K8S_VERSIONS:
                with self.subTest(values=name, kubernetes=version):
                    result = helm_python.lint(str(CHART), values, strict=True, kube_version=version)
                    self.assertEqual(result["errors"], [])
                    self.assertEqual(result["messages"], [], result["messages"])

    def test_every_manifest_is_valid_kubernetes(self):
        for name, docs in self.docs.items():
            self.assertTrue(docs, name)
            for path, doc in docs:
                if doc["kind"] in CRD_KINDS:
                    continue
                for version in K8S_VERSIONS:
                    with self.subTest(values=name, manifest=path, kind=doc["kind"], kubernetes=version):
                        kubernetes_validate.validate(doc, version, strict=True)

    def test_custom_resources_have_their_required_fields(self):
        docs = dict((d["kind"], d) for _, d in self.docs["distributed-tls-sasl"])
        sm = docs["ServiceMonitor"]
        self.assertEqual(sm["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(sm["spec"]["endpoints"][0]["port"], "admin")
        self.assertEqual(sm["spec"]["endpoints"][0]["path"], "/metrics")
        self.assertEqual(sm["metadata"]["labels"]["release"], "kube-prometheus")
        rule = docs["PrometheusRule"]
        ours = yaml.safe_load((ROOT / "deploy/prometheus/sesame-rules.yml").read_text())
        self.assertEqual(rule["spec"]["groups"], ours["groups"])

    def test_the_chart_rules_are_the_project_rules(self):
        self.assertEqual(
            (CHART / "files/sesame-rules.yml").read_text(),
            (ROOT / "deploy/prometheus/sesame-rules.yml").read_text(),
            "helm/sesame/files/sesame-rules.yml must be a copy of deploy/prometheus/sesame-rules.yml",
        )

    def kinds(self, name, kind):
        return [d for _, d in self.docs[name] if d["kind"] == kind]

    def test_one_deployment_per_role_in_distributed_mode(self):
        names = sorted(d["metadata"]["name"] for d in self.kinds("distributed", "Deployment"))
        self.assertEqual(
            names, ["sesame-challenge", "sesame-dispatcher", "sesame-ratelimit", "sesame-verifier"]
        )
        for d in self.kinds("distributed", "Deployment"):
            role = d["metadata"]["labels"]["app.kubernetes.io/component"]
            args = d["spec"]["template"]["spec"]["containers"][0]["args"]
            self.assertIn(f"--roles={role}", args)
        nets = self.kinds("network-policy", "Deployment")
        self.assertNotIn("sesame-ratelimit", [d["metadata"]["name"] for d in nets])

    def test_embedded_mode_is_one_replica_recreated_on_a_volume(self):
        for name in ["defaults", "embedded-trial"]:
            (d,) = self.kinds(name, "Deployment")
            self.assertEqual(d["spec"]["replicas"], 1)
            self.assertEqual(d["spec"]["strategy"]["type"], "Recreate")
            self.assertIn("--roles=all", d["spec"]["template"]["spec"]["containers"][0]["args"])
            vols = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
            self.assertIn("persistentVolumeClaim", vols["data"])
            self.assertEqual(self.kinds(name, "HorizontalPodAutoscaler"), [])
        (pvc,) = self.kinds("embedded-trial", "PersistentVolumeClaim")
        self.assertEqual(pvc["spec"]["resources"]["requests"]["storage"], "20Gi")
        self.assertEqual(pvc["spec"]["storageClassName"], "fast-ssd")

    def test_autoscaling_and_disruption_budgets(self):
        hpas = {h["metadata"]["name"]: h for h in self.kinds("distributed", "HorizontalPodAutoscaler")}
        self.assertEqual(sorted(hpas), ["sesame-challenge", "sesame-dispatcher", "sesame-verifier"])
        deployments = {d["metadata"]["name"]: d for d in self.kinds("distributed", "Deployment")}
        for name, hpa in hpas.items():
            self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], name)
            self.assertIn(name, deployments)
            # The HPA owns the replica count; a fixed one would fight it on every upgrade.
            self.assertNotIn("replicas", deployments[name]["spec"])
        partitions = yaml.safe_load((CHART / "values.yaml").read_text())["kafka"]["pushPartitions"]
        self.assertLessEqual(hpas["sesame-dispatcher"]["spec"]["maxReplicas"], partitions)
        self.assertEqual(self.kinds("autoscaling-off", "HorizontalPodAutoscaler"), [])
        fixed = {d["metadata"]["name"]: d["spec"]["replicas"] for d in self.kinds("autoscaling-off", "Deployment")}
        self.assertEqual(fixed["sesame-challenge"], 6)
        self.assertEqual(fixed["sesame-dispatcher"], 4)
        self.assertEqual(len(self.kinds("distributed", "PodDisruptionBudget")), 4)

    def test_selectors_match_labels(self):
        for name, docs in self.docs.items():
            pods = [
                (d["metadata"]["name"], d["spec"]["template"]["metadata"]["labels"])
                for _, d in docs
                if d["kind"] in ("Deployment", "Job")
            ]

            def matching(selector):
                return [n for n, labels in pods if all(labels.get(k) == v for k, v in selector.items())]

            for _, d in docs:
                kind = d["kind"]
                with self.subTest(values=name, kind=kind, name=d["metadata"]["name"]):
                    if kind == "Deployment":
                        sel = d["spec"]["selector"]["matchLabels"]
                        self.assertEqual(matching(sel), [d["metadata"]["name"]])
                    elif kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
                        sel = {
                            "Service": lambda: d["spec"]["selector"],
                            "PodDisruptionBudget": lambda: d["spec"]["selector"]["matchLabels"],
                            "NetworkPolicy": lambda: d["spec"]["podSelector"]["matchLabels"],
                        }[kind]()
                        # Each selects exactly the pods of its own role.
                        self.assertEqual(matching(sel), [d["metadata"]["name"]])

    def test_every_container_has_probes_resources_and_the_security_context(self):
        for name, docs in self.docs.items():
            for _, d in docs:
                if d["kind"] not in ("Deployment", "Job"):
                    continue
                pod = d["spec"]["template"]["spec"]
                with self.subTest(values=name, workload=d["metadata"]["name"]):
                    self.assertTrue(pod["securityContext"]["runAsNonRoot"])
                    self.assertEqual(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault")
                    self.assertFalse(pod["automountServiceAccountToken"])
                    for c in pod["containers"]:
                        sc = c["securityContext"]
                        self.assertTrue(sc["runAsNonRoot"])
                        self.assertTrue(sc["readOnlyRootFilesystem"])
                        self.assertFalse(sc["allowPrivilegeEscalation"])
                        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
                        self.assertEqual(sc["seccompProfile"]["type"], "RuntimeDefault")
                        self.assertIn("memory", c["resources"]["requests"])
                        self.assertIn("memory", c["resources"]["limits"])
                        if d["kind"] == "Job":
                            continue
                        # Liveness and readiness are distinct checks: liveness
                        # restarts a wedged process (HTTP /live); readiness is
                        # gRPC health, NOT_SERVING while draining.
                        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/live")
                        self.assertEqual(c["livenessProbe"]["httpGet"]["port"], "admin")
                        self.assertEqual(c["startupProbe"]["httpGet"]["path"], "/live")
                        role = d["metadata"]["labels"]["app.kubernetes.io/component"]
                        tls = name == "distributed-tls-sasl"
                        scheme = "HTTPS" if tls else "HTTP"
                        self.assertEqual(c["livenessProbe"]["httpGet"]["scheme"], scheme)
                        self.assertEqual(c["startupProbe"]["httpGet"]["scheme"], scheme)
                        if role == "dispatcher" or tls:
                            # A dispatcher serves no calls: ready while Kafka
                            # answers and not draining. Over TLS every role:
                            # the kubelet's gRPC probe has no TLS.
                            self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/ready")
                            self.assertEqual(c["readinessProbe"]["httpGet"]["scheme"], scheme)
                        else:
                            self.assertIn("grpc", c["readinessProbe"])
                        self.assertIn("cpu", c["resources"]["requests"])

    def test_ports_are_the_binarys_defaults_and_line_up(self):
        defaults = binary_defaults()
        listen = re.search(r'^listen = "(.*)"$', defaults, re.M).group(1)
        admin = re.search(r'^admin_listen = "(.*)"$', defaults, re.M).group(1)
        grpc_port, admin_port = port_of(listen), port_of(admin)
        dockerfile = (ROOT / "deploy/Dockerfile").read_text()
        self.assertIn(f"EXPOSE {grpc_port} {admin_port}", dockerfile)
        for name, docs in self.docs.items():
            for _, d in docs:
                with self.subTest(values=name, kind=d["kind"], name=d["metadata"]["name"]):
                    if d["kind"] == "Deployment":
                        c = d["spec"]["template"]["spec"]["containers"][0]
                        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                        self.assertEqual(ports, {"grpc": grpc_port, "admin": admin_port})
                        if "grpc" in c["readinessProbe"]:
                            self.assertEqual(c["readinessProbe"]["grpc"]["port"], grpc_port)
                        # The addresses the process binds: set on the
                        # container, where they win over the image's ENV.
                        env = {e["name"]: e.get("value") for e in c["env"]}
                        self.assertEqual(env["SESAME_LISTEN"], f"0.0.0.0:{grpc_port}")
                        self.assertEqual(env["SESAME_ADMIN_LISTEN"], f"0.0.0.0:{admin_port}")
                    if d["kind"] == "Service":
                        ports = {p["name"]: p for p in d["spec"]["ports"]}
                        self.assertEqual(ports["grpc"]["appProtocol"], "grpc")
                        self.assertEqual(ports["grpc"]["targetPort"], "grpc")
                        self.assertEqual(ports["admin"]["targetPort"], "admin")
                    if d["kind"] == "ConfigMap":
                        # The image's ENV would override these in a file.
                        self.assertNotIn('"listen"', d["data"]["sesame.toml"])

    def test_termination_waits_for_the_whole_drain(self):
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        s = values["shutdown"]
        r = values["probes"]["readiness"]
        # Load balancers see NOT_SERVING before the listener closes.
        self.assertGreaterEqual(s["announceSeconds"], r["periodSeconds"] * r["failureThreshold"])
        for name, docs in self.docs.items():
            for _, d in docs:
                if d["kind"] != "Deployment":
                    continue
                pod = d["spec"]["template"]["spec"]
                c = pod["containers"][0]
                with self.subTest(values=name, workload=d["metadata"]["name"]):
                    pre = c["lifecycle"]["preStop"]["sleep"]["seconds"]
                    self.assertGreaterEqual(
                        pod["terminationGracePeriodSeconds"],
                        pre + s["announceSeconds"] + 2 * s["graceSeconds"],
                    )
                    toml = self.config_of(docs)
                    self.assertIn(f'"shutdown_announce_seconds" = {s["announceSeconds"]}', toml)
                    self.assertIn(f'"shutdown_grace_seconds" = {s["graceSeconds"]}', toml)

    @staticmethod
    def config_of(docs):
        (cm,) = [d for _, d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sesame-config"]
        return cm["data"]["sesame.toml"]

    def test_no_secret_material_outside_secrets(self):
        for name, rendered in self.rendered.items():
            secrets = [d for _, d in self.docs[name] if d["kind"] == "Secret"]
            secret_values = [
                base64.b64decode(v).decode() for s in secrets for v in s.get("data", {}).values()
            ]
            for path, text in rendered.items():
                if "secret.yaml" in path:
                    continue
                with self.subTest(values=name, file=path):
                    self.assertNotRegex(text, r"sk_[0-9a-f]{16}_", "an API key outside a Secret")
                    self.assertNotRegex(text, r"adm_[A-Za-z0-9_-]{32}", "the admin key outside a Secret")
                    self.assertNotRegex(text, r"BEGIN (EC |RSA )?PRIVATE KEY")
                    self.assertNotIn('"private_key"', text)
                    for v in secret_values:
                        self.assertNotIn(v, text)
            for _, d in self.docs[name]:
                if d["kind"] not in ("Deployment", "Job"):
                    continue
                for c in d["spec"]["template"]["spec"]["containers"]:
                    for e in c.get("env", []):
                        if re.search(r"KEY|PASSWORD|SECRET|TOKEN", e["name"]):
                            self.assertIn("valueFrom", e, f"{e['name']} must come from a Secret")
                            self.assertIn("secretKeyRef", e["valueFrom"])

    def test_secrets_are_mounted_only_where_used(self):
        docs = self.docs["distributed-tls-sasl"]
        mounts = {}
        for _, d in docs:
            if d["kind"] == "Deployment":
                role = d["metadata"]["labels"]["app.kubernetes.io/component"]
                vols = d["spec"]["template"]["spec"]["volumes"]
                mounts[role] = {v["secret"]["secretName"] for v in vols if "secret" in v}
        # Every role serves TLS with the same configuration file.
        tls = {"sesame-tls", "tenant-ca", "sesame-internal"}
        self.assertEqual(mounts["dispatcher"], {"kafka-ca", "kafka-sasl", "bank-apns", "bank-fcm"} | tls)
        state = {"scylla-auth", "scylla-tls", "kafka-ca", "kafka-sasl"} | tls
        # Only the challenge role serves the admin API.
        self.assertEqual(mounts["challenge"], state | {"sesame-admin", "webhook-seal"})
        for role in ["verifier", "ratelimit"]:
            self.assertEqual(mounts[role], state, role)
        for _, d in docs:
            if d["kind"] == "Deployment":
                c = d["spec"]["template"]["spec"]["containers"][0]
                for m in c["volumeMounts"]:
                    # subPath mounts never see a renewed Secret.
                    self.assertNotIn("subPath", m, m)

    def test_the_generated_configuration_is_what_the_binary_accepts(self):
        """Each role's sesame.toml and environment, loaded by the real
        binary with every environment variable checked against its keys."""
        for name, docs in self.docs.items():
            toml = self.config_of(docs)
            for _, d in docs:
                if d["kind"] not in ("Deployment", "Job"):
                    continue
                c = d["spec"]["template"]["spec"]["containers"][0]
                role = next((a.split("=", 1)[1] for a in c["args"] if a.startswith("--roles=")), None)
                # The image's ENV first, then the container's, as at run time.
                env = {"PATH": os.environ.get("PATH", ""), **runtime_env()}
                for e in c.get("env", []):
                    if "value" in e:
                        env[e["name"]] = e["value"]
                    elif "secretKeyRef" in e.get("valueFrom", {}):
                        # What the chart's Secret would hold.
                        env[e["name"]] = "sk_0123456789abcdef_secret-from-the-secret"
                    else:
                        env[e["name"]] = "pod-name"
                with self.subTest(values=name, workload=d["metadata"]["name"]), tempfile.TemporaryDirectory() as tmp:
                    cfg = Path(tmp) / "sesame.toml"
                    cfg.write_text(toml)
                    args = [SESAME_BIN, "check-config", "--strict-env", f"--config={cfg}"]
                    if role:
                        args.append(f"--roles={role}")
                    run = subprocess.run(args, capture_output=True, text=True, env=env)
                    self.assertEqual(run.returncode, 0, run.stderr)
                    self.assertIn('listen = "0.0.0.0:50051"', run.stdout)
                    if name == "distributed":
                        self.assertIn("[scylla.replication]\neu-central = 3\neu-west = 3\n", run.stdout)
                    self.assertNotIn("sk_0123456789abcdef", run.stdout, "check-config must redact the key")
                    if name == "distributed-tls-sasl":
                        self.assertIn('sasl_password_file = "/etc/sesame/secrets/kafka-sasl/password"', run.stdout)
                        self.assertIn('"security.protocol" = "SASL_SSL"', run.stdout)
                        self.assertIn("max_prompts = 5", run.stdout)
                        self.assertIn('storage = "scylla://scylla-0.scylla:9042,scylla-1.scylla:9142/sesame"', run.stdout)
                        self.assertIn('cert = "/etc/sesame/secrets/tls/tls.crt"', run.stdout)
                        self.assertIn('admin_key_file = "/etc/sesame/secrets/admin/admin-key"', run.stdout)
                        self.assertIn('seal_key_file = "/etc/sesame/secrets/webhook-seal/seal-key"', run.stdout)
                        self.assertIn('client_ca = "/etc/sesame/secrets/tls-client-ca/ca.crt"', run.stdout)
                        self.assertIn('internal_ca = "/etc/sesame/secrets/tls-internal/ca.crt"', run.stdout)
                        self.assertIn('client_cert = "/etc/sesame/secrets/tls-internal/tls.crt"', run.stdout)
                        self.assertIn('public_device_url = "https://device.auth.example.eu"', run.stdout)
                        if role == "dispatcher":
                            # Simulated pushes are not used with apns_fcm; the URL would be https.
                            pass
                    if name == "distributed":
                        self.assertIn('public_device_url = "http://sesame-verifier.auth.svc:50051"', run.stdout)
                        self.assertNotIn("[tls]\ncert = \"/", run.stdout)

    def test_the_dev_tenant_key_is_a_valid_api_key(self):
        secrets = {s["metadata"]["name"]: s for s in self.kinds("defaults", "Secret")}
        self.assertEqual(sorted(secrets), ["sesame-admin", "sesame-dev-tenant"])
        key = base64.b64decode(secrets["sesame-dev-tenant"]["data"]["api-key"]).decode()
        self.assertRegex(key, r"^sk_[0-9a-f]{16}_[A-Za-z0-9]{43}$")
        admin = base64.b64decode(secrets["sesame-admin"]["data"]["admin-key"]).decode()
        self.assertRegex(admin, r"^adm_[A-Za-z0-9]{43}$")
        for s in secrets.values():
            self.assertEqual(s["metadata"]["annotations"]["helm.sh/resource-policy"], "keep")
        names = [s["metadata"]["name"] for s in self.kinds("embedded-trial", "Secret")]
        self.assertEqual(names, ["sesame-admin"], "devTenant.existingSecret: no dev-tenant Secret created")

    def test_notes_tell_how_to_reach_it(self):
        notes = self.rendered["distributed"]["sesame/templates/NOTES.txt"]
        self.assertIn("sesame demo --server http://127.0.0.1:50051 --device-server http://127.0.0.1:50052", notes)
        self.assertIn("svc/sesame-challenge", notes)
        notes = self.rendered["defaults"]["sesame/templates/NOTES.txt"]
        self.assertIn("Trial mode", notes)
        notes = self.rendered["distributed-tls-sasl"]["sesame/templates/NOTES.txt"]
        self.assertIn("export SESAME_TLS_CA=sesame-ca.crt SESAME_TLS_SERVER_NAME=sesame-challenge.auth.svc", notes)
        self.assertIn("--server https://127.0.0.1:50051 --device-server https://127.0.0.1:50052", notes)

    def test_the_dispatcher_calls_the_push_gateway_over_tls(self):
        values = merged(self.VALUE_TLS_SIMULATOR, {})
        docs = documents(render(values))
        (disp,) = [d for _, d in docs if d["kind"] == "Deployment" and d["metadata"]["labels"]["app.kubernetes.io/component"] == "dispatcher"]
        env = {e["name"]: e.get("value") for e in disp["spec"]["template"]["spec"]["containers"][0]["env"]}
        self.assertEqual(env["SESAME_SIMULATOR_URL"], "https://sesame-verifier.auth.svc:50051")
        (sm,) = [d for _, d in self.docs["distributed-tls-sasl"] if d["kind"] == "ServiceMonitor"]
        (ep,) = sm["spec"]["endpoints"]
        self.assertEqual(ep["scheme"], "https")
        self.assertEqual(ep["tlsConfig"]["serverName"], "sesame.auth.svc")

    VALUE_TLS_SIMULATOR = merged(
        DISTRIBUTED,
        {"tls": {"enabled": True, "existingSecret": "sesame-tls", "internalSecret": "sesame-internal"}},
    )


class BadValuesFail(unittest.TestCase):
    """Wrong values fail at install time, saying what is wrong."""

    CASES = [
        ("negative replicas", {"roles": {"challenge": {"replicas": -1}}}, "/roles/challenge/replicas"),
        ("an unknown role", {"roles": {"gateway": {"enabled": True}}}, "additional properties 'gateway' not allowed"),
        ("an unknown mode", {"mode": "cluster"}, "/mode"),
        ("an unknown top-level value", {"replicaCount": 3}, "additional properties 'replicaCount' not allowed"),
        ("distributed without ScyllaDB", {"mode": "distributed"}, "scylla.contactPoints is required"),
        (
            "distributed without Kafka",
            merged(DISTRIBUTED, {"kafka": {"bootstrapServers": []}}),
            "kafka.bootstrapServers is required",
        ),
        (
            "SASL without its secret",
            merged(DISTRIBUTED, {"kafka": {"sasl": {"enabled": True, "username": "u"}}}),
            "kafka.sasl.existingSecret must name the Secret",
        ),
        (
            "a ScyllaDB user without a password secret",
            merged(DISTRIBUTED, {"scylla": {"username": "sesame"}}),
            "scylla.existingSecret must name the Secret",
        ),
        (
            "an APNs app without its key secret",
            {"push": {"provider": "apns_fcm", "apps": {"bank-ios": {"tenant": "bank", "apns": {"topic": "t", "keyId": "ABC123DEFG", "teamId": "TEAM123456"}}}}},
            "missing property 'existingSecret'",
        ),
        (
            "an FCM app without its service-account secret",
            {"push": {"provider": "apns_fcm", "apps": {"bank-android": {"tenant": "bank", "fcm": {}}}}},
            "missing property 'existingSecret'",
        ),
        ("APNs/FCM without apps", {"push": {"provider": "apns_fcm"}}, "push.provider=apns_fcm needs push.apps"),
        ("a password in kafka.properties", {"kafka": {"properties": {"sasl.password": "x"}}}, "invalid propertyName 'sasl.password'"),
        ("a secret in config", {"config": {"dev_tenant_key": "sk_x"}}, "/config"),
        ("root", {"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
        (
            "more dispatchers than partitions",
            merged(DISTRIBUTED, {"kafka": {"pushPartitions": 4}}),
            "roles.dispatcher.autoscaling.maxReplicas (12) is above kafka.pushPartitions (4)",
        ),
        (
            "every role off",
            merged(DISTRIBUTED, {"roles": {r: {"enabled": False} for r in ["challenge", "verifier", "dispatcher", "ratelimit"]}}),
            "every role is disabled",
        ),
        ("a bad image digest", {"image": {"digest": "latest"}}, "/image/digest"),
        (
            "a ScyllaDB password secret without a user",
            merged(DISTRIBUTED, {"scylla": {"existingSecret": "scylla-auth"}}),
            "scylla.username must name the ScyllaDB user",
        ),
        (
            "a Kafka password in config",
            {"config": {"kafka": {"properties": {"sasl.password": "x"}}}},
            "config.kafka.properties.sasl.password: no secrets in config",
        ),
        ("push apps in config", {"config": {"push_apps": {}}}, "configure push apps with push.apps"),
        ("a chart-owned key in config", {"config": {"listen": "0.0.0.0:1"}}, "config.listen is set by the chart"),
        ("TLS without its certificate", {"tls": {"enabled": True}}, "tls.existingSecret must name the Secret with tls.crt"),
        (
            "a tenant CA without TLS",
            {"tls": {"clientCaSecret": "tenant-ca"}},
            "tls.clientCaSecret / tls.internalSecret need tls.enabled",
        ),
        ("TLS settings in config", {"config": {"tls": {"cert": "/x"}}}, "config.tls is set by the chart"),
    ]

    def test_bad_values_fail_with_a_clear_message(self):
        for what, values, message in self.CASES:
            with self.subTest(what):
                with self.assertRaises(Exception) as caught:
                    render(values)
                self.assertIn(message, str(caught.exception))


class ChartReadme(unittest.TestCase):
    """The chart's README lists every value, with its default."""

    def test_every_value_is_documented(self):
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        readme = (CHART / "README.md").read_text()
        rows = dict(re.findall(r"^\| `([^`]+)` \| `([^`]*)` \|", readme, re.M))

        def leaves(prefix, v):
            if isinstance(v, dict) and v and not prefix.endswith(("resources", "requests", "limits")):
                for k, sub in v.items():
                    yield from leaves(f"{prefix}.{k}" if prefix else k, sub)
            else:
                yield prefix, v

        documented = set()
        for key, default in leaves("", values):
            with self.subTest(key):
                self.assertIn(key, rows, f"values.yaml has {key}; add a row to helm/sesame/README.md")
                self.assertEqual(rows[key], json.dumps(default, separators=(",", ":")), key)
                documented.add(key)
        self.assertEqual(sorted(set(rows) - documented), [], "README rows for values that do not exist")


if __name__ == "__main__":
    unittest.main()
