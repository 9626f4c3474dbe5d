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
    assert {"Deployment", "StatefulSet", "Service", "PersistentVolumeClaim"} <= kinds
    assert "Secret" not in kinds or all("stringData" not in d for d in docs)
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        spec = doc["spec"]
        # one manager per cluster (several on one store fight) and one root; Recreate: a
        # rollout never runs the old and the new pod at once
        assert spec["replicas"] == 1, doc["metadata"]["name"]
        assert spec["strategy"] == {"type": "Recreate"}
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
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
        # the root's broker admits only joined clusters: the token from a Secret the pod
        # waits for (not optional: started without it, the manager could never register)
        token = {e["name"]: e for e in container["env"]}["EDGEPLANE_JOIN_TOKEN"]
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
