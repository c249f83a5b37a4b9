"""deploy/compose.yaml cannot run here (no Docker engine), so it is checked
for everything that can be checked without one: Compose's own validation
(`docker-compose config`), and that every image, port, environment
variable, command, flag and file it names exists — each Sesame service's
environment and command are loaded by the real binary
(`sesame check-config --strict-env`, `sesame migrate --dry-run`), and the
Prometheus configuration by `promtool check config`.

Run by scripts/test-deploy.sh:
    SESAME_BIN=target/debug/sesame python -m unittest discover -s deploy/tests
"""

import os
import re
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

import yaml

from dockerfile import runtime_env

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SESAME_BIN = os.environ.get("SESAME_BIN", "")
SESAME_IMAGE = "sesame:dev"


def volume(v):
    """(source, target, is a bind mount) of a long- or short-syntax volume."""
    if isinstance(v, dict):
        return v["source"], v["target"], v.get("type") == "bind"
    source, target = v.split(":")[:2]
    return source, target, source.startswith(("/", "."))


def sesame(args, env):
    return subprocess.run(
        [SESAME_BIN, *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), **env},
    )


class ComposeFile(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        run = subprocess.run(
            ["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        cls.config = yaml.safe_load(run.stdout)
        cls.services = cls.config["services"]
        cls.image_env = runtime_env()
        cls.sesame_services = {n: s for n, s in cls.services.items() if s.get("image") == SESAME_IMAGE}

    def test_it_has_every_part_of_the_distributed_setup(self):
        for name in ["kafka", "scylla", "migrate", "challenge", "verifier", "dispatcher", "ratelimit", "prometheus", "grafana"]:
            self.assertIn(name, self.services)
        kafka = self.services["kafka"]["environment"]
        self.assertEqual(kafka["KAFKA_PROCESS_ROLES"], "broker,controller", "KRaft, no ZooKeeper")

    def test_the_sesame_image_is_built_from_the_dockerfile(self):
        for name, s in self.sesame_services.items():
            with self.subTest(name):
                self.assertEqual(Path(s["build"]["context"]), ROOT)
                self.assertTrue((ROOT / s["build"]["dockerfile"]).is_file())
                self.assertTrue(s["read_only"])
                self.assertEqual(s["cap_drop"], ["ALL"])

    def test_other_images_are_pinned(self):
        for name, s in self.services.items():
            if name in self.sesame_services:
                continue
            with self.subTest(name):
                image = s["image"]
                self.assertRegex(image, r"^[\w./-]+:[\w.-]+$")
                self.assertNotRegex(image, r":latest$")

    def test_the_dockerfile_environment_is_real_configuration(self):
        run = sesame(["check-config", "--strict-env", "-q"], self.image_env)
        self.assertEqual(run.returncode, 0, run.stderr)

    def test_each_sesame_service_runs_a_real_command_with_real_settings(self):
        for name, s in self.sesame_services.items():
            env = {**self.image_env, **{k: str(v) for k, v in (s.get("environment") or {}).items()}}
            command = s["command"]
            with self.subTest(name):
                if command[0] == "serve":
                    roles = command[command.index("--roles") + 1]
                    run = sesame(["check-config", "--strict-env", "-q", "--roles", roles], env)
                    self.assertEqual(run.returncode, 0, run.stderr)
                elif command[0] == "migrate":
                    # Prints the CQL it would run (keyspace with this
                    # service's replication) without connecting.
                    run = sesame(["check-config", "--strict-env", "-q"], env)
                    self.assertEqual(run.returncode, 0, run.stderr)
                    run = sesame(["migrate", "--dry-run"], env)
                    self.assertEqual(run.returncode, 0, run.stderr)
                    self.assertIn("'datacenter1': 1", run.stdout)
                else:
                    # A client command: every flag it passes exists.
                    help_text = sesame([command[0], "--help"], {}).stdout
                    self.assertTrue(help_text, f"sesame {command[0]} has no help: not a command")
                    for arg in command[1:]:
                        flag = arg.split("=", 1)[0]
                        self.assertIn(flag, help_text, f"sesame {command[0]} has no {flag}")

    def test_ports_are_the_binarys(self):
        grpc = int(self.image_env["SESAME_LISTEN"].rsplit(":", 1)[1])
        admin = int(self.image_env["SESAME_ADMIN_LISTEN"].rsplit(":", 1)[1])
        published = {}
        for name, s in self.sesame_services.items():
            for p in s.get("ports", []):
                target = int(p["target"]) if isinstance(p, dict) else int(str(p).rsplit(":", 1)[1])
                published[name] = target
                self.assertIn(target, (grpc, admin), name)
        self.assertEqual(published.get("challenge"), grpc)
        self.assertEqual(published.get("verifier"), grpc)
        # The device URL in enrollment QR codes is the verifier's published port.
        public = self.sesame_services["challenge"]["environment"]["SESAME_PUBLIC_DEVICE_URL"]
        verifier_host_port = [
            int(p["published"]) for p in self.services["verifier"]["ports"] if int(p["target"]) == grpc
        ]
        self.assertEqual(public, f"http://localhost:{verifier_host_port[0]}")
        # Service URLs between containers use real service names and the gRPC port.
        for name, s in self.sesame_services.items():
            for value in list((s.get("environment") or {}).values()) + s["command"]:
                for host, port in re.findall(r"https?://([a-z-]+):(\d+)", str(value)):
                    if host == "localhost":
                        continue
                    with self.subTest(service=name, url=value):
                        self.assertIn(host, self.services)
                        if host in self.sesame_services:
                            self.assertEqual(int(port), grpc)

    def test_every_mounted_file_exists(self):
        for name, s in self.services.items():
            for v in s.get("volumes", []):
                source, _, bind = volume(v)
                if not bind:
                    # A named volume: declared at the top level.
                    self.assertIn(source, self.config.get("volumes", {}), name)
                    continue
                with self.subTest(service=name, source=source):
                    self.assertTrue(Path(source).exists(), f"{source} is mounted but missing")

    def test_prometheus_scrapes_every_role_with_the_project_rules(self):
        cfg = yaml.safe_load((DEPLOY / "compose/prometheus.yml").read_text())
        admin = int(self.image_env["SESAME_ADMIN_LISTEN"].rsplit(":", 1)[1])
        targets = [t for job in cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
        roles = {n for n, s in self.sesame_services.items() if s["command"][0] == "serve"}
        self.assertEqual(sorted(t.split(":")[0] for t in targets), sorted(roles))
        for t in targets:
            self.assertEqual(int(t.split(":")[1]), admin)
        mounts = {t: src for src, t, _ in map(volume, self.services["prometheus"]["volumes"])}
        (rules,) = cfg["rule_files"]
        self.assertEqual(Path(mounts[rules]), DEPLOY / "prometheus/sesame-rules.yml")
        # promtool checks the file with the rules where the container sees them.
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(DEPLOY / "prometheus/sesame-rules.yml", Path(tmp) / "sesame-rules.yml")
            cfg["rule_files"] = [str(Path(tmp) / "sesame-rules.yml")]
            (Path(tmp) / "prometheus.yml").write_text(yaml.safe_dump(cfg))
            run = subprocess.run(
                ["promtool", "check", "config", str(Path(tmp) / "prometheus.yml")],
                capture_output=True,
                text=True,
            )
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)

    def test_grafana_is_provisioned_with_the_dashboard(self):
        g = self.services["grafana"]
        mounts = {t: Path(src) for src, t, _ in map(volume, g["volumes"])}
        provisioning = mounts["/etc/grafana/provisioning"]
        providers = yaml.safe_load((provisioning / "dashboards/sesame.yml").read_text())["providers"]
        dash_dir = providers[0]["options"]["path"]
        dashboards = [t for t in mounts if t.startswith(dash_dir + "/")]
        self.assertEqual([mounts[t] for t in dashboards], [DEPLOY / "grafana/sesame-dashboard.json"])
        ds = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"][0]
        self.assertEqual(ds["type"], "prometheus")
        self.assertEqual(ds["url"], "http://prometheus:9090")
        self.assertIn("prometheus", self.services)


if __name__ == "__main__":
    unittest.main()
