"""deploy/kubernetes (kustomize) and deploy/helm/edgeplane render offline and validate
against Kubernetes' schemas; what edgeplane needs of them holds (one manager per cluster,
never two during a rollout, non-root, TLS, no secret in a manifest); their commands are
flags edgeplane has. And deploy/docker/Dockerfile, checked statically (no image build:
no container daemon or base image can be reached here)."""

from __future__ import annotations

import functools
import re
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python import HelmRenderError, lint

from deploy_fixtures import CHART, DEPLOY, accepts_flags, containers, helm, notes, tool
from edgeplane.store.sql import _engine_url

KUBERNETES = "1.32.0"  # the kubectl of scripts/system-deps.sh's era


@functools.cache  # one render: the tests only read it
def kustomize() -> list[dict[str, Any]]:
    done = subprocess.run(
        [tool("kubectl"), "kustomize", str(DEPLOY / "kubernetes")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def check_edgeplane_workloads(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "Service"} <= kinds
    # a data volume for each process that starts its own broker (none when all share one)
    assert "PersistentVolumeClaim" in kinds or all(
        d["spec"]["replicas"] > 1 for d in docs if d["kind"] == "Deployment"
    )
    assert "Secret" not in kinds or all("stringData" not in d for d in docs)
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        spec = doc["spec"]
        component = spec["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        if spec["replicas"] == 1:
            # a manager that starts its own broker, the root, a shared broker: Recreate, a
            # rollout never runs the old and the new pod at once
            assert spec["strategy"] == {"type": "Recreate"}, doc["metadata"]["name"]
        else:
            # several managers of one cluster (managers[].replicas), or several roots: the
            # lease keeps one leading; a standby is never ready, so the new pods start
            # beside the old ones
            assert component in ("manager", "root"), doc["metadata"]["name"]
            assert spec["strategy"] == {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "100%", "maxUnavailable": "100%"},
            }
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            if component == "broker":
                continue
            env = {e["name"]: e for e in container["env"]}
            # the password comes from a Secret, into the store URL by Kubernetes' $(VAR)
            assert "secretKeyRef" in env["POSTGRES_PASSWORD"]["valueFrom"]
            store = env["EDGEPLANE_STORE"]["value"]
            assert "$(POSTGRES_PASSWORD)" in store
            _engine_url(store)  # a URL edgeplane's store takes, with a valid schema name
    for component in ("root", "manager"):
        found = list(containers(docs, component))
        assert found, component
        for container in found:
            args = container["args"]
            assert args[0] == component
            assert {"--tls-cert", "--tls-key", "--ca"} <= set(args)
            assert "--insecure" not in args
            assert args[args.index("--host") + 1] == "0.0.0.0"
    for container in containers(docs, "manager"):
        env = {e["name"]: e for e in container["env"]}
        if "--root-credentials" in container["args"] or "EDGEPLANE_ROOT" in env:
            continue  # several managers (one identity), or several roots (none): below
        # the root's broker admits only joined clusters: the token from a Secret the pod
        # waits for (not optional: started without it, the manager could never register)
        token = env["EDGEPLANE_JOIN_TOKEN"]
        ref = token["valueFrom"]["secretKeyRef"]
        assert ref["key"] == "token" and not ref.get("optional"), ref


def test_kustomize_renders_and_validates() -> None:
    docs = kustomize()
    assert {d["metadata"]["namespace"] for d in docs} == {"edgeplane"}
    check_edgeplane_workloads(docs)
    schemas = {_engine_url(e["value"])[1] for c in containers(docs, "root") for e in c["env"]
               if e["name"] == "EDGEPLANE_STORE"}  # fmt: skip
    assert schemas == {"root"}
    (manager,) = containers(docs, "manager")
    join = {e["name"]: e for e in manager["env"]}["EDGEPLANE_JOIN_TOKEN"]
    name = join["valueFrom"]["secretKeyRef"]["name"]
    assert name == "edgeplane-join-local"
    # the command that makes it is where the operator reads how to apply the kit
    kustomization = (DEPLOY / "kubernetes" / "kustomization.yaml").read_text()
    assert f"create secret generic {name} --from-literal=token=" in kustomization


def test_kustomize_commands_are_flags_edgeplane_has() -> None:
    for component in ("root", "manager"):
        for container in containers(kustomize(), component):
            done = accepts_flags(container["args"])
            assert done.exit_code == 0, done.output


def test_helm_chart_lints_renders_and_validates() -> None:
    report = lint(str(CHART))
    assert report["errors"] == []
    # severity 1 is information ("icon is recommended"); 2 and up are warnings and errors
    assert [m for m in report["messages"] if m["severity"] > 1] == []
    docs = helm()
    check_edgeplane_workloads(docs)
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert set(secret["data"]) == {"password"} and len(secret["data"]["password"]) > 40


def test_helm_one_manager_per_cluster_each_with_its_schema_and_the_root() -> None:
    values = {
        "managers": [
            {"clusterId": "berlin-1", "labels": {"region": "eu"}, "location": "52.5,13.4"},
            {"clusterId": "paris"},
        ]
    }
    docs = helm(values)
    check_edgeplane_workloads(docs)
    managers = list(containers(docs, "manager"))
    assert [m["args"][m["args"].index("--cluster-id") + 1] for m in managers] == [
        "berlin-1", "paris",
    ]  # fmt: skip
    berlin = managers[0]
    assert berlin["args"][berlin["args"].index("--root") + 1] == "mqtts://ep-edgeplane-root:8884"
    assert berlin["args"][5:9] == ["--label", "region=eu", "--location", "52.5,13.4"]
    schemas = [
        _engine_url(e["value"])[1]
        for m in managers
        for e in m["env"]
        if e["name"] == "EDGEPLANE_STORE"
    ]
    assert schemas == ["cluster_berlin_1", "cluster_paris"]
    done = accepts_flags(berlin["args"])
    assert done.exit_code == 0, done.output
    for root in containers(docs, "root"):
        done = accepts_flags(root["args"])
        assert done.exit_code == 0, done.output


def test_helm_join_secret_per_manager_and_none_without_a_root() -> None:
    managers = [{"clusterId": "berlin-1"}, {"clusterId": "paris", "joinSecret": "mine"}]
    values: dict[str, Any] = {"managers": managers}
    refs = [
        {e["name"]: e for e in m["env"]}["EDGEPLANE_JOIN_TOKEN"]["valueFrom"]["secretKeyRef"]
        for m in containers(helm(values), "manager")
    ]
    assert [r["name"] for r in refs] == ["ep-edgeplane-manager-berlin-1-join", "mine"]
    text = notes(values)  # what helm install prints: how to make each Secret
    for name, cluster in (("ep-edgeplane-manager-berlin-1-join", "berlin-1"), ("mine", "paris")):
        assert f'"cluster_id": "{cluster}"' in text
        assert f"create secret generic {name} --from-literal=token=" in text
    alone = helm({**values, "root": {"enabled": False}})
    for manager in containers(alone, "manager"):
        assert "--root" not in manager["args"]
        assert "EDGEPLANE_JOIN_TOKEN" not in {e["name"] for e in manager["env"]}
    assert "create secret generic" not in notes({**values, "root": {"enabled": False}})


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"managers": [{"clusterId": "a"}, {"clusterId": "a"}]}, "given twice"),
        ({"managers": [{"clusterId": "a b"}]}, "1-63 letters"),
        ({"managers": [{"clusterId": "eu.west"}]}, "1-63 letters"),
        ({"postgresql": {"enabled": False}}, "store.existingSecret"),
    ],
)
def test_helm_refuses_what_edgeplane_cannot_run(values: dict[str, Any], says: str) -> None:
    with pytest.raises(HelmRenderError, match=says):
        helm(values)


def test_helm_without_tls_says_so_and_an_external_store_is_a_secret() -> None:
    docs = helm({"tls": {"enabled": False}, "postgresql": {"enabled": False},
                 "store": {"existingSecret": "mine"}})  # fmt: skip
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    assert not any(d["kind"] == "StatefulSet" for d in docs)
    for component in ("root", "manager"):
        for container in containers(docs, component):
            assert "--insecure" in container["args"] and "--tls-cert" not in container["args"]
            env = {e["name"]: e for e in container["env"]}
            assert env["STORE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "url"}
            assert env["EDGEPLANE_STORE"]["value"].startswith("$(STORE_URL)?schema=")


SHARED = {"adminToken": {"existingSecret": "admin"}}


def by_name(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_helm_several_managers_of_one_cluster_share_the_charts_broker() -> None:
    """managers[].replicas: N pods of one cluster on one store, one identity at the root
    and one broker (the chart's Mosquitto), each reachable through the Service, which only
    the leader is ready for; a cluster without the option is left as it was."""
    values = {
        **SHARED,
        "managers": [{"clusterId": "berlin", "replicas": 3}, {"clusterId": "paris"}],
    }
    docs = helm(values)
    check_edgeplane_workloads(docs)
    name = "ep-edgeplane-manager-berlin"
    deployment = by_name(docs, "Deployment", name)
    assert deployment["spec"]["replicas"] == 3
    berlin, paris = containers(docs, "manager")
    args = berlin["args"]
    assert args[args.index("--advertise-url") + 1] == f"https://{name}:7070"
    assert "--broker-port" not in args and "--broker-host" not in args
    assert accepts_flags(args).exit_code == 0
    env = {e["name"]: e for e in berlin["env"]}
    assert "EDGEPLANE_JOIN_TOKEN" not in env  # one join for all: the identity is shared
    password = env["BROKER_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password == {"name": f"{name}-broker", "key": "password"}
    assert env["EDGEPLANE_BROKER"]["value"] == (
        f"mqtts://edgeplane:$(BROKER_PASSWORD)@{name}-broker:8883"
    )
    # the identity at the root: a Secret's credentials.json, where --root-credentials reads
    credentials = args[args.index("--root-credentials") + 1]
    pod = deployment["spec"]["template"]["spec"]
    mount = next(m for m in berlin["volumeMounts"] if m["name"] == "identity")
    assert credentials == f"{mount['mountPath']}/credentials.json" and mount["readOnly"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["identity"]["secret"]["secretName"] == f"{name}-identity"
    assert volumes["data"] == {"name": "data", "emptyDir": {}}  # all it keeps is in the store
    assert not any(d["kind"] == "PersistentVolumeClaim" and name in d["metadata"]["name"]
                   for d in docs if "berlin" in d["metadata"]["name"])  # fmt: skip
    service = by_name(docs, "Service", name)
    assert [p["name"] for p in service["spec"]["ports"]] == ["api"]
    # the shared broker: locked, TLS, its password from the Secret the chart made
    broker = by_name(docs, "Deployment", f"{name}-broker")
    (mosquitto,) = broker["spec"]["template"]["spec"]["containers"]
    assert mosquitto["command"] == ["sh", "-c"]
    assert "mosquitto_passwd -c -b /tmp/passwd edgeplane" in mosquitto["args"][0]
    config = by_name(docs, "ConfigMap", f"{name}-broker")["data"]["mosquitto.conf"].split("\n")
    assert {"listener 8883 0.0.0.0", "allow_anonymous false", "password_file /tmp/passwd",
            "certfile /etc/edgeplane/tls/server.pem"} <= set(config)  # fmt: skip
    assert by_name(docs, "Service", f"{name}-broker")["spec"]["ports"][0]["port"] == 8883
    secret = by_name(docs, "Secret", f"{name}-broker")
    assert set(secret["data"]) == {"password"}
    # paris: one manager, its own broker, volume and join token, as before
    assert "--broker-port" in paris["args"] and "--advertise-url" not in paris["args"]
    assert "EDGEPLANE_JOIN_TOKEN" in {e["name"] for e in paris["env"]}
    text = notes(values)
    assert f"create secret generic {name}-identity --from-file=credentials.json=" in text
    assert "--print-bridge-config" in text and f"service {name}-broker" in text


def test_helm_several_managers_on_a_broker_of_your_own() -> None:
    own = [{"clusterId": "a", "replicas": 2, "broker": {"url": "mqtts://broker.example:8883"}},
           {"clusterId": "b", "replicas": 2, "broker": {"existingSecret": "b-broker"}}]  # fmt: skip
    docs = helm({**SHARED, "managers": own})
    check_edgeplane_workloads(docs)
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert deployments == {"ep-edgeplane-root", "ep-edgeplane-manager-a", "ep-edgeplane-manager-b"}
    a, b = ({e["name"]: e for e in c["env"]} for c in containers(docs, "manager"))
    assert a["EDGEPLANE_BROKER"]["value"] == "mqtts://broker.example:8883"
    assert b["EDGEPLANE_BROKER"]["valueFrom"]["secretKeyRef"] == {"name": "b-broker", "key": "url"}
    alone = helm({**SHARED, "root": {"enabled": False}, "managers": own})
    for manager in containers(alone, "manager"):  # no root: no identity to share
        assert "--root-credentials" not in manager["args"] and "--root" not in manager["args"]
        assert "identity" not in {m["name"] for m in manager["volumeMounts"]}


def test_helm_several_roots_share_a_broker_the_managers_dial() -> None:
    """root.replicas: the roots on the chart's Mosquitto (as a cluster's managers), and
    every manager registers there as user edgeplane: no join token, no identity."""
    managers = [{"clusterId": "berlin", "replicas": 2}, {"clusterId": "paris"}]
    values = {**SHARED, "root": {"replicas": 2}, "managers": managers}
    docs = helm(values)
    check_edgeplane_workloads(docs)
    name = "ep-edgeplane-root"
    assert by_name(docs, "Deployment", name)["spec"]["replicas"] == 2
    (root,) = containers(docs, "root")
    assert root["args"][root["args"].index("--advertise-url") + 1] == f"https://{name}:7070"
    assert "--broker-port" not in root["args"] and accepts_flags(root["args"]).exit_code == 0
    env = {e["name"]: e for e in root["env"]}
    assert env["EDGEPLANE_BROKER"]["value"] == (
        f"mqtts://edgeplane:$(ROOT_BROKER_PASSWORD)@{name}-broker:8884"
    )
    assert by_name(docs, "Service", f"{name}-broker")["spec"]["ports"][0]["port"] == 8884
    policy = by_name(docs, "NetworkPolicy", f"{name}-broker")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": f"{name}-broker"}
    for manager in containers(docs, "manager"):
        args = manager["args"]
        assert "--root" not in args and "--root-credentials" not in args
        env = {e["name"]: e for e in manager["env"]}
        assert "EDGEPLANE_JOIN_TOKEN" not in env
        assert env["EDGEPLANE_ROOT"]["value"] == env_root_url(name)
        assert accepts_flags(args).exit_code == 0
    text = notes(values)
    assert "2 roots on one shared broker" in text and "create secret generic" not in text


def env_root_url(root: str) -> str:
    return f"mqtts://edgeplane:$(ROOT_BROKER_PASSWORD)@{root}-broker:8884"


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"managers": [{"clusterId": "a", "replicas": 2}]}, "adminToken.existingSecret"),
        ({**SHARED, "managers": [{"clusterId": "a", "replicas": 2,
                                  "broker": {"url": "mqtt://x", "existingSecret": "y"}}]},
         "not both"),
        ({"managers": [{"clusterId": "a", "replicas": -1}]}, "1 or more"),
        ({"root": {"replicas": 2}}, "adminToken.existingSecret"),
        ({**SHARED, "root": {"replicas": 2, "broker": {"url": "mqtt://x", "existingSecret": "y"}}},
         "not both"),
    ],
)  # fmt: skip
def test_helm_refuses_several_managers_it_cannot_run(values: dict[str, Any], says: str) -> None:
    with pytest.raises(HelmRenderError, match=says):
        helm(values)


def test_the_validator_does_refuse_a_bad_manifest() -> None:
    """The checks above can fail: a misspelt field and a wrong type are errors."""
    deployment = next(d for d in helm() if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_dockerfile_is_multi_stage_non_root_with_edgeplane_as_entrypoint() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2 and " AS build" in stages[0]
    final = lines[lines.index(stages[-1]) :]
    user = [line for line in final if line.startswith("USER ")]
    assert user == ["USER 10001:10001"]  # the uid the manifests' runAsUser names
    assert 'ENTRYPOINT ["edgeplane"]' in final
    assert any(line == "COPY --from=build /opt/edgeplane /opt/edgeplane" for line in final)
    # Mosquitto: the broker root and manager start and lock down
    assert re.search(r"apt-get install .*\bmosquitto\b", text)
    for docs in (kustomize(), helm()):
        for component in ("root", "manager"):
            for container in containers(docs, component):
                assert "command" not in container  # the image's ENTRYPOINT runs the role
    ignored = (DEPLOY.parent / ".dockerignore").read_text().split()
    assert ignored[ignored.index("*") :][:4] == ["*", "!pyproject.toml", "!README.md", "!src"]
