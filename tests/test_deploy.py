"""deploy/: the Kubernetes manifests are valid for a recent Kubernetes, and every sluice config
they (and the example configs) carry is one sluice itself accepts."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from proxy.config import load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
VERSION = "1.33.0"  # a recent release whose schemas kubernetes-validate ships
SECRETS_DIR = "/etc/sluice/secrets/"


def manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None and doc.get("kind") != "Kustomization":
                out.append((f"{path.relative_to(KUBERNETES)}:{doc['kind']}", doc))
    return out


MANIFESTS = manifests()


def test_the_manifests_cover_both_tiers_and_the_sidecar():
    kinds = {name for name, _ in MANIFESTS}
    for expected in (
        "base/local-daemonset.yaml:DaemonSet",
        "base/remote-deployment.yaml:Deployment",
        "base/remote-service.yaml:Service",
        "base/remote-pdb.yaml:PodDisruptionBudget",
        "sidecar/app-with-sluice.yaml:Deployment",
    ):
        assert expected in kinds


@pytest.mark.parametrize("name,doc", MANIFESTS, ids=[name for name, _ in MANIFESTS])
def test_each_manifest_is_valid_kubernetes(name, doc):
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_validation_catches_a_misspelt_field():
    """(the check above can fail)"""
    doc = copy.deepcopy(dict(MANIFESTS)["base/remote-deployment.yaml:Deployment"])
    doc["spec"]["replica"] = doc["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_kustomization_lists_every_base_file():
    kustomization = yaml.safe_load((KUBERNETES / "base/kustomization.yaml").read_text())
    files = {p.name for p in (KUBERNETES / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def secret_files(tmp_path: Path) -> dict[str, str]:
    """What the Secret sluice-credentials holds, written out as its volume would be."""
    credentials = [
        doc
        for name, doc in MANIFESTS
        if doc["kind"] == "Secret" and doc["metadata"]["name"] == "sluice-credentials"
    ]
    (doc,) = credentials
    for key, value in doc["stringData"].items():
        (tmp_path / key).write_text(value)
    return doc["stringData"]


CONFIGS = [
    (name, doc)
    for name, doc in MANIFESTS
    if name.endswith(":ConfigMap") and "sluice.yaml" in doc["data"]
]


@pytest.mark.parametrize("name,doc", CONFIGS, ids=[name for name, _ in CONFIGS])
def test_each_mounted_config_is_accepted_by_sluice_with_the_secrets_it_names(name, doc, tmp_path):
    secrets = secret_files(tmp_path)
    text = doc["data"]["sluice.yaml"]
    named = {
        line.split(SECRETS_DIR, 1)[1].split()[0].rstrip("},")
        for line in text.splitlines()
        if SECRETS_DIR in line
    }
    assert named and named <= set(secrets), f"{name} names secrets the Secret lacks"
    config = tmp_path / "sluice.yaml"
    config.write_text(text.replace(SECRETS_DIR, f"{tmp_path}/"))
    cfg = load_config(config)
    app = cfg.user("app")
    assert app is not None and app.password == secrets["app-password"]
    assert cfg.admin.token == secrets["admin-token"]


def test_every_config_a_workload_mounts_exists():
    config_maps = {doc["metadata"]["name"] for _, doc in CONFIGS}
    for name, doc in MANIFESTS:
        if doc["kind"] not in ("Deployment", "DaemonSet"):
            continue
        for volume in doc["spec"]["template"]["spec"]["volumes"]:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, name


@pytest.mark.parametrize("example", ["local.yaml", "remote.yaml"])
def test_the_example_configs_are_accepted(example):
    load_config(DEPLOY / example)


@pytest.mark.parametrize("example", ["fleet-local.yaml", "fleet-remote.yaml"])
def test_the_fleet_examples_are_accepted_with_their_secrets(example, tmp_path):
    text = (DEPLOY / example).read_text()
    for name in ("admin-password", "admin-token", "app-password", "monitor-password",
                 "replication-password"):  # fmt: skip
        (tmp_path / name).write_text(f"{name}-value\n")
    config = tmp_path / example
    config.write_text(text.replace(SECRETS_DIR, f"{tmp_path}/"))
    cfg = load_config(config)
    assert cfg.fleet is not None and cfg.admin.token == "admin-token-value"
    if cfg.tier == "local":
        assert cfg.upstream.servers == ()  # its remote tiers come from etcd
    else:
        assert cfg.failover.mode == "auto"
