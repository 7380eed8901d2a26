"""deploy/: the container image, the dask-kubernetes operator manifests, the dask Helm values.

- Core Kubernetes kinds (and the pod and service specs inside the custom resources) are
  validated against the Kubernetes OpenAPI schemas with ``kubernetes-validate`` in strict
  mode (unknown fields rejected) for the versions in ``K8S_VERSIONS``.
- ``DaskCluster`` / ``DaskJob`` are validated against the operator's CRD OpenAPI v3 schema
  (vendored from dask-kubernetes ``OPERATOR_VERSION``, tests/data/dask-kubernetes-crds/),
  with unknown fields rejected, as ``kubectl apply --validate=strict`` does (the API
  server would otherwise prune them silently).
- Policy: no Service of type LoadBalancer/NodePort, requests and limits on every
  container, runAsNonRoot, no privilege escalation, images pinned to the project version,
  the Dockerfile's pins equal to pyproject's, the job's command line parsed by obpipe's
  own parser and the dask commands by distributed's.
- Dask TLS: every scheduler, worker and runner requires encryption, has its role's
  certificate from the obpipe-dask-tls Secret and the scheduler's tls:// address; a real
  scheduler, worker and client started with those settings work, a client without
  certificates or on tcp:// is refused. NetworkPolicies admit each cluster's scheduler
  (8786, 8787) and workers to that cluster's own pods only.
- Helm: the post-renderer (kubectl kustomize) adds the container securityContext, no
  service-account token and the scheduler's volumes to the chart's rendering.
- Every check is shown to fail on a broken copy of the manifests (negative cases).
- Store paths as fsspec URLs (``file://``, ``memory://``): simulate, then the index and
  normalize stages, one product row per spectrum, nothing written beside the URL.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import xarray as xr
import yaml
from dask.utils import parse_bytes
from fsspec.registry import known_implementations
from packaging.specifiers import SpecifierSet

from obpipe.cli import build_parser, main
from obpipe.engine.blockwise import open_products

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
MANIFEST_DIR = DEPLOY / "kubernetes"
HELM_VALUES = DEPLOY / "helm" / "dask-values.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"
CRD_DIR = ROOT / "tests" / "data" / "dask-kubernetes-crds"
#: the dask-kubernetes release the CRDs come from (= the operator Helm chart to install)
OPERATOR_VERSION = "2026.3.0"
#: Kubernetes versions the core objects are validated against (oldest and newest supported)
K8S_VERSIONS = ("1.31.0", "1.37.0")
CRD_FILES = {"DaskCluster": "daskcluster.yaml", "DaskJob": "daskjob.yaml"}
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# --------------------------------------------------------------------------- loading


def _load_all(path: Path) -> list[dict[str, Any]]:
    with open(path) as fh:
        return [d for d in yaml.load_all(fh, Loader=_LOADER) if d]


@functools.cache
def _manifests() -> tuple[tuple[str, dict[str, Any]], ...]:
    out = []
    for path in sorted(MANIFEST_DIR.glob("*.yaml")):
        out.extend((path.name, doc) for doc in _load_all(path))
    return tuple(out)


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) of every manifest, deep-copied (tests may mutate them)."""
    return [(name, copy.deepcopy(doc)) for name, doc in _manifests()]


def manifest(kind: str) -> dict[str, Any]:
    docs = [doc for _, doc in manifests() if doc["kind"] == kind]
    assert len(docs) == 1, f"expected one {kind} in {MANIFEST_DIR}, found {len(docs)}"
    return docs[0]


def helm_values() -> dict[str, Any]:
    return _load_all(HELM_VALUES)[0]


@functools.cache
def _pyproject() -> dict[str, Any]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def _pins(requirements: list[str]) -> dict[str, str]:
    """Exact ``name==version`` pins of a requirement list (extras stripped)."""
    pins = {}
    for req in requirements:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*==\s*([^\s;,]+)\s*", req)
        if m:
            pins[m.group(1).lower()] = m.group(3)
    return pins


# --------------------------------------------------------------------------- CRD schemas


def _strict(node: Any) -> Any:
    """The schema with unknown fields rejected wherever the CRD lists the known ones."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if (out.get("type") == "object" and isinstance(out.get("properties"), dict)
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft4Validator:
    (crd,) = _load_all(CRD_DIR / CRD_FILES[kind])
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    # the API server adds the object's own envelope to every custom resource
    schema["properties"].update({"apiVersion": {"type": "string", "enum": [
        f"{crd['spec']['group']}/v1"]}, "kind": {"type": "string", "enum": [kind]},
        "metadata": {"type": "object", "required": ["name"]}})
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata",
                                 "spec"})
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def _crd_errors(doc: dict[str, Any]) -> list[str]:
    return [f"{doc['kind']} {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in crd_validator(doc["kind"]).iter_errors(doc)]


# --------------------------------------------------------------------------- core schemas


def _core_errors(doc: dict[str, Any], where: str = "") -> list[str]:
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.path))
            errors.append(f"{where or doc['kind']} (k8s {version}) {path}: {exc.message}")
    return errors


def _wrap(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def embedded_specs(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, "Pod"|"Service", spec) of every pod / service spec in a manifest."""
    kind, spec = doc["kind"], doc.get("spec") or {}
    if kind == "DaskJob":
        yield "DaskJob job", "Pod", spec.get("job", {}).get("spec", {})
        spec = spec.get("cluster", {}).get("spec", {})
    if kind in ("DaskCluster", "DaskJob"):
        sched, worker = spec.get("scheduler", {}), spec.get("worker", {})
        yield f"{kind} scheduler", "Pod", sched.get("spec", {})
        yield f"{kind} scheduler service", "Service", sched.get("service", {})
        yield f"{kind} worker", "Pod", worker.get("spec", {})
    elif kind == "Service":
        yield "Service", "Service", spec
    elif kind == "Pod":
        yield "Pod", "Pod", spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield kind, "Pod", spec.get("template", {}).get("spec", {})


# --------------------------------------------------------------------------- policy


def pod_problems(where: str, pod: dict[str, Any], container_context: bool = True) -> list[str]:
    """Non-root, limits and (``container_context``) the restricted container settings."""
    problems = []
    psc = pod.get("securityContext") or {}
    containers = [*pod.get("containers", []), *pod.get("initContainers", [])]
    if not containers:
        problems.append(f"{where}: no containers")
    for c in containers:
        name = f"{where}/{c.get('name')}"
        csc = c.get("securityContext") or {}
        if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if csc.get("runAsUser", psc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser is 0 (root)")
        if csc.get("privileged"):
            problems.append(f"{name}: privileged")
        if container_context:
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: allowPrivilegeEscalation is not false")
            if "ALL" not in (csc.get("capabilities") or {}).get("drop", []):
                problems.append(f"{name}: capabilities not dropped (drop: [ALL])")
        resources = c.get("resources") or {}
        for section in ("requests", "limits"):
            for res in ("cpu", "memory"):
                if res not in (resources.get(section) or {}):
                    problems.append(f"{name}: no resources.{section}.{res}")
    return problems


def service_problems(where: str, service: dict[str, Any]) -> list[str]:
    """Only ClusterIP: the scheduler and the dashboard stay inside the cluster."""
    problems = []
    kind = service.get("type", "ClusterIP")
    if kind != "ClusterIP":
        problems.append(f"{where}: Service type {kind} exposes it outside the cluster")
    if service.get("externalIPs"):
        problems.append(f"{where}: externalIPs set")
    if any("nodePort" in p for p in service.get("ports", [])):
        problems.append(f"{where}: nodePort set")
    return problems


TLS_SECRET = "obpipe-dask-tls"
TLS_DIR = "/etc/dask-tls"
#: Dask's TLS role of each container of the operator manifests
TLS_ROLES = {"scheduler": "SCHEDULER", "worker": "WORKER", "job": "CLIENT"}


def tls_problems(where: str, pod: dict[str, Any], address: str) -> list[str]:
    """Dask comms TLS-only: encryption required, the CA and the container's own role
    certificate from the Secret's volume, the scheduler listening on tls://, clients and
    workers pointed at its tls:// address."""
    problems = []
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    tls_volumes = [n for n, v in volumes.items()
                   if (v.get("secret") or {}).get("secretName") == TLS_SECRET]
    if not tls_volumes:
        problems.append(f"{where}: no volume from the Secret {TLS_SECRET}")
    for c in pod.get("containers", []):
        name = f"{where}/{c.get('name')}"
        role = TLS_ROLES.get(c.get("name", ""))
        if role is None:
            problems.append(f"{name}: unknown Dask role")
            continue
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        prefix = "DASK_DISTRIBUTED__COMM__"
        if env.get(prefix + "REQUIRE_ENCRYPTION") != "true":
            problems.append(f"{name}: {prefix}REQUIRE_ENCRYPTION is not \"true\"")
        want = {prefix + "TLS__CA_FILE": f"{TLS_DIR}/ca.crt",
                f"{prefix}TLS__{role}__CERT": f"{TLS_DIR}/tls.crt",
                f"{prefix}TLS__{role}__KEY": f"{TLS_DIR}/tls.key"}
        for key, value in want.items():
            if env.get(key) != value:
                problems.append(f"{name}: {key} is {env.get(key)!r}, not {value!r}")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        mount = mounts.get(TLS_DIR)
        if mount is None or mount["name"] not in tls_volumes or not mount.get("readOnly"):
            problems.append(f"{name}: {TLS_DIR} is not a read-only mount of {TLS_SECRET}")
        argv = [*c.get("command", []), *c.get("args", [])]
        if role == "SCHEDULER" and "tls" not in [b for a, b in zip(argv, argv[1:], strict=False)
                                                 if a == "--protocol"]:
            problems.append(f"{name}: the scheduler does not listen with --protocol tls")
        if role != "SCHEDULER" and address not in argv:
            problems.append(f"{name}: not pointed at the scheduler's {address}")
    return problems


def check_manifest(doc: dict[str, Any]) -> list[str]:
    """Every problem of one manifest: schemas (CRD or core) and policy."""
    problems: list[str] = []
    if doc["kind"] in CRD_FILES:
        problems += _crd_errors(doc)
        for where, kind, spec in embedded_specs(doc):
            problems += _core_errors(_wrap(kind, "embedded", spec), where)
        cluster = doc["spec"]["cluster"] if doc["kind"] == "DaskJob" else doc
        selector = (cluster.get("spec", {}).get("scheduler", {}).get("service", {})
                    .get("selector") or {})
        if selector.get("dask.org/cluster-name") != doc["metadata"]["name"] or \
                selector.get("dask.org/component") != "scheduler":
            problems.append(f"{doc['kind']}: scheduler Service selector {selector} does not "
                            f"select the scheduler of cluster {doc['metadata']['name']!r}")
        for where, kind, spec in embedded_specs(doc):
            if kind == "Pod":
                problems += tls_problems(where, spec, scheduler_tls_address(doc))
    else:
        problems += _core_errors(doc)
    for where, kind, spec in embedded_specs(doc):
        problems += (pod_problems(where, spec) if kind == "Pod"
                     else service_problems(where, spec))
    return problems


def cluster_name(doc: dict[str, Any]) -> str:
    """The Dask cluster of a DaskCluster or DaskJob (the operator names a job's after it)."""
    return doc["metadata"]["name"]


def scheduler_tls_address(doc: dict[str, Any]) -> str:
    ns = doc["metadata"].get("namespace", "obpipe")
    return f"tls://{cluster_name(doc)}-scheduler.{ns}.svc.cluster.local:8786"


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for _, kind, spec in embedded_specs(doc) if kind == "Pod"
            for c in spec.get("containers", [])]


# --------------------------------------------------------------------------- manifests


def test_every_manifest_is_valid() -> None:
    docs = manifests()
    kinds = sorted(doc["kind"] for _, doc in docs)
    assert {"DaskCluster", "DaskJob", "Namespace", "Secret", "NetworkPolicy"} <= set(kinds), \
        kinds
    for name, doc in docs:
        assert check_manifest(doc) == [], name
        assert doc["metadata"].get("namespace", "obpipe") == "obpipe", name
    assert network_policy_problems([doc for _, doc in docs]) == []


@pytest.mark.parametrize("change, expected", [
    (lambda pols: pols.pop(0), "cluster 'obpipe' scheduler: no NetworkPolicy"),
    (lambda pols: pols[0]["spec"]["ingress"][0].pop("from"), "admits every source"),
    (lambda pols: pols[0]["spec"]["ingress"][0]["from"].append(
        {"namespaceSelector": {}}), "not only the pods of cluster 'obpipe'"),
    (lambda pols: pols[0]["spec"]["ingress"][0]["from"][0]["podSelector"].update(
        matchLabels={"app": "anything"}), "not only the pods of cluster 'obpipe'"),
    (lambda pols: pols[2]["spec"]["ingress"][0]["ports"].pop(), "are not both admitted"),
])
def test_network_policy_checks_can_fail(change: Any, expected: str) -> None:
    docs = [doc for _, doc in manifests()]
    pols = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert [p["metadata"]["name"] for p in pols] == [
        "obpipe-scheduler", "obpipe-workers", "obpipe-run-scheduler", "obpipe-run-workers"]
    change(pols)
    docs = [d for d in docs if d["kind"] != "NetworkPolicy"] + pols
    problems = network_policy_problems(docs)
    assert any(expected in p for p in problems), problems


def network_policy_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Each Dask cluster's scheduler admits 8786 and 8787 from its own pods only, and its
    workers from its own pods only: a NetworkPolicy selects them, and none of the policies
    that select them admits anything else (no namespace or IP block, no empty rule)."""
    problems = []
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    for doc in docs:
        if doc["kind"] not in CRD_FILES:
            continue
        name = cluster_name(doc)
        for component in ("scheduler", "worker"):
            pod = {"dask.org/cluster-name": name, "dask.org/component": component}
            selecting = [p for p in policies if p["metadata"].get("namespace", "obpipe")
                         == doc["metadata"].get("namespace", "obpipe")
                         and (p["spec"].get("podSelector") or {}).get("matchLabels", {}).items()
                         <= pod.items()]
            where = f"cluster {name!r} {component}"
            if not selecting:
                problems.append(f"{where}: no NetworkPolicy selects its pods")
                continue
            ports: set[int] = set()
            for pol in selecting:
                if "Ingress" not in pol["spec"].get("policyTypes", ["Ingress"]):
                    problems.append(f"{where}: {pol['metadata']['name']} has no Ingress type")
                for rule in pol["spec"].get("ingress", []):
                    peers = rule.get("from")
                    if not peers:
                        problems.append(f"{where}: {pol['metadata']['name']} admits every "
                                        "source (an ingress rule without from)")
                    for peer in peers or []:
                        labels = (peer.get("podSelector") or {}).get("matchLabels", {})
                        if set(peer) != {"podSelector"} or \
                                labels.get("dask.org/cluster-name") != name:
                            problems.append(f"{where}: {pol['metadata']['name']} admits "
                                            f"{peer}, not only the pods of cluster {name!r}")
                    ports |= {int(p["port"]) for p in rule.get("ports", [])}
            if component == "scheduler" and not {8786, 8787} <= ports:
                problems.append(f"{where}: 8786 and 8787 are not both admitted "
                                f"(ports {sorted(ports)})")
    return problems


def _set(doc: dict[str, Any], path: str | tuple[str, ...], value: Any) -> None:
    """Set (or delete, value ``_DELETE``) the item at a dotted path or a tuple of keys."""
    *parents, last = path.split(".") if isinstance(path, str) else path
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        last = int(last)
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()
_WORKER = "spec.worker.spec"
_WC = _WORKER + ".containers.0"
_SCHED = "spec.scheduler"


@pytest.mark.parametrize("kind, path, value, expected", [
    ("DaskCluster", _SCHED + ".service.type", "LoadBalancer", "Service type LoadBalancer"),
    ("DaskCluster", _SCHED + ".service.type", "NodePort", "Service type NodePort"),
    ("DaskJob", "spec.cluster.spec.scheduler.service.type", "LoadBalancer",
     "Service type LoadBalancer"),
    # a typo: the CRD schema rejects the unknown field, and the limits are missing
    ("DaskCluster", _WC + ".resource", {"limits": {"cpu": "1"}}, "'resource' was unexpected"),
    ("DaskCluster", _WC + ".resources", _DELETE, "no resources.limits.memory"),
    ("DaskJob", "spec.job.spec.containers.0.resources.limits", _DELETE,
     "no resources.limits.cpu"),
    # the CRD types quantities as strings: an unquoted 2 is refused by the API server
    ("DaskCluster", _WC + ".resources.limits.cpu", 2, "is not of type 'string'"),
    ("DaskCluster", _WORKER + ".securityContext.runAsNonRoot", _DELETE,
     "runAsNonRoot is not true"),
    ("DaskJob", "spec.job.spec.securityContext.runAsUser", 0, "runAsUser is 0"),
    ("DaskCluster", _WC + ".securityContext.allowPrivilegeEscalation", True,
     "allowPrivilegeEscalation is not false"),
    ("DaskCluster", _SCHED + ".service", _DELETE, "'service' is a required property"),
    ("DaskCluster", ("spec", "scheduler", "service", "selector", "dask.org/cluster-name"),
     "another-cluster", "does not select the scheduler"),
    ("DaskCluster", "spec.workers", {"replicas": 2}, "'workers' was unexpected"),
    # an invalid core field inside the embedded pod spec (k8s schema: restartPolicy enum)
    ("DaskJob", "spec.job.spec.restartPolicy", 3, "is not of type 'string'"),
    ("Secret", "stringdata", {"A": "b"}, "'stringdata' was unexpected"),
    # Dask TLS: the scheduler's protocol, a worker's address, the Secret, the env
    ("DaskCluster", _SCHED + ".spec.containers.0.args", ["--port", "8786"],
     "does not listen with --protocol tls"),
    ("DaskCluster", _WC + ".args.0", "tcp://obpipe-scheduler.obpipe.svc.cluster.local:8786",
     "not pointed at the scheduler's tls://"),
    ("DaskJob", "spec.job.spec.volumes", [], "no volume from the Secret obpipe-dask-tls"),
    ("DaskJob", "spec.job.spec.containers.0.env", [], "REQUIRE_ENCRYPTION is not"),
    ("Namespace", "spec", {"finalizers": "kubernetes"}, "is not of type 'array'"),
])
def test_broken_manifests_are_rejected(kind: str, path: str | tuple[str, ...], value: Any,
                                       expected: str) -> None:
    doc = manifest(kind)  # valid: test_every_manifest_is_valid
    _set(doc, path, value)
    problems = check_manifest(doc)
    assert any(expected in p for p in problems), problems


def test_images_are_the_project_version() -> None:
    version = _pyproject()["project"]["version"]
    images = {c["image"] for _, doc in manifests() for c in containers(doc)}
    values = helm_values()
    images |= {f"{values[k]['image']['repository']}:{values[k]['image']['tag']}"
               for k in ("scheduler", "worker")}
    assert len(images) == 1, f"one image everywhere, got {images}"
    (image,) = images
    name, tag = image.rsplit(":", 1)
    assert tag == version and name.endswith("/obpipe"), image
    readme = (DEPLOY / "README.md").read_text()
    assert image in readme and image in DOCKERFILE.read_text()


def test_job_runs_obpipe_run_against_its_cluster() -> None:
    job = manifest("DaskJob")
    (runner,) = job["spec"]["job"]["spec"]["containers"]
    argv = [*runner.get("command", [])[1:], *runner["args"]]
    assert runner["command"][0] == "obpipe"
    # the TLS address of the job's own cluster (the operator's DASK_SCHEDULER_ADDRESS is
    # tcp://, which require-encryption refuses)
    args = build_parser().parse_args(argv)  # the CLI the image installs accepts them
    assert args.command == "run"
    assert args.address == scheduler_tls_address(job)
    for url in (args.survey, args.out):
        protocol = url.split("://", 1)[0]
        assert "://" in url and protocol in known_implementations, url
    # s3:// needs s3fs, which the image installs through the `s3` extra
    s3_impl = known_implementations["s3"]["class"].split(".")[0]
    extras = _pyproject()["project"]["optional-dependencies"]
    assert s3_impl in _pins(extras["s3"])
    # secrets come from the Secret that object-store-secret.example.yaml describes
    secret = manifest("Secret")["metadata"]["name"]
    for c in containers(job):
        if c["name"] != "scheduler":
            assert {"secretRef": {"name": secret}} in c.get("envFrom", []), c["name"]


def test_dask_commands_parse() -> None:
    """The scheduler and worker command lines are valid for the installed distributed."""
    from distributed.cli import dask_scheduler, dask_worker

    clis = {("dask", "scheduler"): dask_scheduler.main, ("dask", "worker"): dask_worker.main}
    n = 0
    for _, doc in manifests():
        for c in containers(doc):
            cli = clis.get(tuple(c.get("command", [])))
            if cli is None:
                continue
            ctx = cli.make_context(" ".join(c["command"]), list(c.get("args", [])))
            n += 1
            if c["command"][1] == "worker":
                # the positional scheduler: its own cluster's TLS address
                assert ctx.params["scheduler"] == scheduler_tls_address(doc)
                limit = parse_bytes(ctx.params["memory_limit"])
                assert limit <= parse_bytes(c["resources"]["limits"]["memory"])
                assert int(ctx.params["nthreads"]) <= float(c["resources"]["limits"]["cpu"])
    assert n == 4  # scheduler and worker of the DaskCluster and of the DaskJob


def test_secret_example_holds_no_real_credentials() -> None:
    secret = manifest("Secret")
    keys = set(secret["stringData"])
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= keys
    assert secret["stringData"]["AWS_SECRET_ACCESS_KEY"] == "REPLACE-ME"


# --------------------------------------------------------------------------- Helm values

#: keys of the dask chart's values.yaml (github.com/dask/helm-chart, dask/values.yaml at
#: commit e581ea8ad6a1cff7c46705a0d69b5127b5ea9643, chart appVersion 2023.10.1, plus the
#: keys its templates read that the file only mentions in comments); None = free-form.
_IMAGE = {"repository": None, "tag": None, "pullPolicy": None, "pullSecrets": None}
_INGRESS = {k: None for k in ("enabled", "ingressClassName", "pathType", "tls", "secretName",
                              "hostname", "annotations")}
_POD = {k: None for k in ("resources", "tolerations", "affinity", "nodeSelector",
                          "securityContext", "serviceAccountName", "livenessProbe",
                          "readinessProbe", "env", "mounts", "name", "replicas", "metrics")}
CHART_KEYS: dict[str, Any] = {
    "nameOverride": None, "fullnameOverride": None, "additional_worker_groups": None,
    "scheduler": {**_POD, "enabled": None, "image": _IMAGE, "serviceType": None,
                  "loadBalancerIP": None, "servicePort": None, "serviceAnnotations": None,
                  "extraArgs": None},
    "webUI": {"name": None, "servicePort": None, "ingress": _INGRESS},
    "worker": {**_POD, "image": {**_IMAGE, "dask_worker": None}, "strategy": None,
               "custom_scheduler_url": None, "default_resources": None, "extraArgs": None,
               "annotations": None, "port": None, "portDashboard": None,
               "threads_per_worker": None},
    "jupyter": {**_POD, "enabled": None, "rbac": None, "image": _IMAGE, "serviceType": None,
                "servicePort": None, "password": None, "passwordHint": None,
                "command": None, "args": None, "extraConfig": None, "ingress": _INGRESS},
}


def _unknown_keys(values: Any, known: Any, prefix: str = "") -> list[str]:
    if known is None or not isinstance(values, dict):
        return []
    out = []
    for key, value in values.items():
        if key not in known:
            out.append(f"{prefix}{key}: not a key of the dask chart's values")
        else:
            out += _unknown_keys(value, known[key], f"{prefix}{key}.")
    return out


def check_helm_values(values: dict[str, Any]) -> list[str]:
    problems = _unknown_keys(values, CHART_KEYS)
    for part in ("scheduler", "worker"):
        v = values.get(part, {})
        container = {"name": part, "image": "x", "resources": v.get("resources", {}),
                     **({"env": v["env"]} if v.get("env") else {}),
                     **{p: v[p] for p in ("livenessProbe", "readinessProbe") if v.get(p)}}
        pod = {"containers": [container], **({"securityContext": v["securityContext"]}
                                            if v.get("securityContext") else {})}
        problems += _core_errors(_wrap("Pod", part, pod), f"helm {part}")
        # the chart cannot set container-level securityContext: pod-level checks only
        problems += pod_problems(f"helm {part}", pod, container_context=False)
    problems += service_problems("helm scheduler service", {
        "type": values.get("scheduler", {}).get("serviceType", "ClusterIP")})
    if values.get("webUI", {}).get("ingress", {}).get("enabled", False):
        problems.append("helm webUI: ingress enabled exposes the dashboard")
    jupyter = values.get("jupyter", {})
    if jupyter.get("enabled", True):  # the chart's default is enabled
        problems.append("helm jupyter: enabled (the image has no Jupyter)")
    return problems


def test_helm_values_are_valid() -> None:
    values = helm_values()
    assert check_helm_values(values) == []
    # the chart passes limits.memory to --memory-limit and threads to --nthreads
    w = values["worker"]
    assert parse_bytes(w["resources"]["limits"]["memory"]) > 0
    assert int(w["threads_per_worker"]) <= float(w["resources"]["limits"]["cpu"])
    assert w["image"]["dask_worker"] == "dask-worker"  # mapped by the image's entrypoint


@pytest.mark.parametrize("path, value, expected", [
    ("scheduler.serviceType", "LoadBalancer", "Service type LoadBalancer"),
    ("scheduler.serviceTyp", "ClusterIP", "serviceTyp: not a key"),
    ("worker.resources", {"requests": {"cpu": "1"}}, "no resources.limits.memory"),
    ("worker.securityContext.runAsNonRoot", False, "runAsNonRoot is not true"),
    (("worker", "env", "6", "valueFrom", "secretKeyRef", "nam"), "x", "'nam' was unexpected"),
    ("jupyter.enabled", True, "jupyter: enabled"),
    ("webUI.ingress.enabled", True, "ingress enabled"),
])
def test_broken_helm_values_are_rejected(path: str | tuple[str, ...], value: Any,
                                         expected: str) -> None:
    values = helm_values()
    _set(values, path, value)
    problems = check_helm_values(values)
    assert any(expected in p for p in problems), problems


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    out, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # comment inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    return out


def dockerfile_user(instructions: list[tuple[str, str]]) -> str | None:
    users = [args for instr, args in instructions if instr == "USER"]
    return users[-1] if users else None


def test_dockerfile_non_root_and_pinned() -> None:
    ins = dockerfile_instructions(DOCKERFILE.read_text())
    project = _pyproject()["project"]
    pins = _pins(project["dependencies"])
    (base,) = [a for i, a in ins if i == "FROM"]
    m = re.fullmatch(r"python:(\d+\.\d+)-slim(-\w+)?", base)
    assert m, base
    assert m.group(1) + ".0" in SpecifierSet(project["requires-python"])
    # non-root, numeric (Kubernetes' runAsNonRoot can only verify a numeric user)
    user = dockerfile_user(ins)
    assert user is not None and user.split(":")[0].isdigit() and int(user.split(":")[0]) > 0
    uids = {spec["securityContext"].get("runAsUser") for _, doc in manifests()
            for _, kind, spec in embedded_specs(doc) if kind == "Pod"}
    uids.add(helm_values()["worker"]["securityContext"]["runAsUser"])
    assert uids == {int(user.split(":")[0])}, uids
    # torch: the CPU build with pyproject's pin, installed before the project
    runs = [a for i, a in ins if i == "RUN"]
    torch_run = [k for k, a in enumerate(runs) if re.search(r"\btorch==", a)]
    assert len(torch_run) == 1
    words = shlex.split(runs[torch_run[0]])
    assert f"torch=={pins['torch']}" in words
    assert words[words.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    project_run = [k for k, a in enumerate(runs) if "/tmp/obpipe-src[" in a]
    assert len(project_run) == 1 and project_run[0] > torch_run[0]
    extras = re.search(r"obpipe-src\[([^\]]+)\]", runs[project_run[0]]).group(1).split(",")
    assert set(extras) <= set(project["optional-dependencies"]), extras
    # s3fs is released in lockstep with fsspec: the two pins must be the same version
    assert _pins(project["optional-dependencies"]["s3"])["s3fs"] == pins["fsspec"]
    # every COPY source exists in the repository
    for instr, args in ins:
        if instr == "COPY":
            *srcs, _ = shlex.split(args)
            for src in srcs:
                assert (ROOT / src).exists(), src
    entry = [a for i, a in ins if i == "ENTRYPOINT"]
    assert entry == ['["obpipe-entrypoint"]']
    assert any("deploy/docker-entrypoint.sh /usr/local/bin/obpipe-entrypoint" in a
               for i, a in ins if i == "COPY")


@pytest.mark.parametrize("text, ok", [
    ("FROM python:3.11-slim\nUSER root\n", False),
    ("FROM python:3.11-slim\nUSER 0:0\n", False),
    ("FROM python:3.11-slim\nRUN useradd app\n", False),
    ("FROM python:3.11-slim\nUSER 10001 \\\n\n", True),
])
def test_dockerfile_user_check_can_fail(text: str, ok: bool) -> None:
    user = dockerfile_user(dockerfile_instructions(text))
    is_non_root = user is not None and user.split(":")[0].isdigit() and \
        int(user.split(":")[0]) > 0
    assert is_non_root == ok


def test_entrypoint_runs_obpipe_and_the_dask_chart_commands() -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ.get('PATH', '')}"}

    def run(*args: str) -> str:
        res = subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True,
                             env=env, timeout=120)
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert "usage: obpipe" in run("--help")
    assert "usage: obpipe run" in run("run", "--help")
    assert "dask scheduler" in run("dask-scheduler", "--help")
    assert "dask worker" in run("dask-worker", "--help")


def test_readme_names_the_files_and_the_operator_version() -> None:
    text = (DEPLOY / "README.md").read_text()
    for path in [*MANIFEST_DIR.glob("*.yaml"), HELM_VALUES, DOCKERFILE]:
        assert str(path.relative_to(ROOT)) in text, path
    assert f"--version {OPERATOR_VERSION}" in text
    assert "port-forward" in text


# --------------------------------------------------------------------------- fsspec URLs


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_store_paths_accept_fsspec_urls(tmp_path, monkeypatch, capsys, scheme: str) -> None:
    """simulate + index + normalize with the survey and the products at fsspec URLs."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    if scheme == "file":
        base = (tmp_path / "bucket").as_uri()  # file:///.../bucket, no directory yet
    else:
        base = f"memory://obpipe-deploy-{uuid.uuid4().hex}"
    survey, products = f"{base}/survey.zarr", f"{base}/products"
    try:
        assert main(["simulate", "--n-stars", "60", "--seed", "5", "--chunk-size", "40",
                     "--out", survey, "--scheduler", "threads"]) == 0
        assert main(["run", survey, "--out", products, "--stages", "index,normalize",
                     "--scheduler", "threads"]) == 0
        capsys.readouterr()
        cube = xr.open_zarr(survey, consolidated=False)
        prods = open_products(products)
        n = cube.sizes["spec"]
        assert n > 60  # repeat visits
        assert prods.sizes["spec"] == n
        np.testing.assert_array_equal(prods["specid"].values, cube["specid"].values)
        assert prods.attrs["survey"] == survey
        assert prods.attrs["stage_normalize_complete"]
        assert prods["normalize_blocks_done"].values.all()
        nf = prods["norm_flux"].values
        assert nf.shape == (n, cube.sizes["wave"])
        assert np.isfinite(nf).any(axis=1).all()  # every spectrum was normalised
        # nothing was written beside the URL (os.makedirs on a URL made ./file:/... dirs)
        assert os.listdir(cwd) == []
        fs, root = fsspec.core.url_to_fs(products)
        assert fs.exists(f"{root}/products.zarr/zarr.json")
        if scheme == "file":
            assert (tmp_path / "bucket" / "products" / "products.zarr").is_dir()
        # a second run finds the stages complete (resume through the URL)
        assert main(["run", survey, "--out", products, "--stages", "index,normalize",
                     "--scheduler", "threads"]) == 0
        assert capsys.readouterr().out.count("skipped (complete)") == 2
    finally:
        if scheme == "memory":
            fsspec.filesystem("memory").rm(base.split("://", 1)[1], recursive=True)


# --------------------------------------------------------------------------- Dask TLS, for real


def _make_tls_secret(d: Path) -> None:
    """ca.crt, tls.crt, tls.key as the README's openssl commands make them (one cert for
    every role, signed by a private CA)."""
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=obpipe-dask-ca", "-keyout", "ca.key", "-out", "ca.crt")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=obpipe-dask", "-keyout",
        "tls.key", "-out", "tls.csr")
    ssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "tls.crt")


def _container_env(doc: dict[str, Any], name: str, tls_dir: Path) -> dict[str, str]:
    """A manifest container's Dask env, the Secret's mount path replaced by ``tls_dir``."""
    (c,) = [c for c in containers(doc) if c["name"] == name]
    return {e["name"]: str(e["value"]).replace(TLS_DIR, str(tls_dir))
            for e in c.get("env", []) if e["name"].startswith("DASK_")}


def _free_tcp_port() -> int:
    """A port the OS has just handed out on 127.0.0.1. A random port in 40000-60000 lies in
    Linux's ephemeral range: another test's client socket may hold it, the scheduler then
    cannot bind, and the client's TLS handshake meets whatever listens there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command")
def test_tls_env_of_the_manifests_encrypts_and_refuses_plain_tcp(tmp_path: Path) -> None:
    """A scheduler and a worker started with the DaskCluster's own TLS settings (and the
    scheduler's --protocol tls) serve a client that has the job runner's settings; a client
    without certificates, or on tcp://, gets no connection."""
    _make_tls_secret(tmp_path)
    cluster = manifest("DaskCluster")
    base = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    base["DASK_DISTRIBUTED__DIAGNOSTICS__NVML"] = "false"
    env_s = {**base, **_container_env(cluster, "scheduler", tmp_path)}
    env_w = {**base, **_container_env(cluster, "worker", tmp_path)}
    env_c = {**base, **_container_env(manifest("DaskJob"), "job", tmp_path)}
    port = _free_tcp_port()
    address = f"tls://127.0.0.1:{port}"
    dask_bin = str(Path(sys.executable).parent / "dask")
    procs = [subprocess.Popen([dask_bin, "scheduler", "--protocol", "tls", "--host",
                               "127.0.0.1", "--port", str(port), "--dashboard-address",
                               "127.0.0.1:0"], env=env_s, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen([dask_bin, "worker", address, "--nthreads", "1",
                                       "--no-nanny", "--host", "127.0.0.1",
                                       "--dashboard-address", "127.0.0.1:0"], env=env_w,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        client = ("import sys; from distributed import Client\n"
                  "with Client(sys.argv[1], timeout='60s') as c:\n"
                  "    c.wait_for_workers(1, timeout=120)\n"
                  "    print(c.submit(sum, [1, 2, 3]).result())\n")
        ok = subprocess.run([sys.executable, "-c", client, address], env=env_c,
                            capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0 and ok.stdout.strip() == "6", ok.stderr[-2000:]
        for env, addr in ((base, address), (env_c, f"tcp://127.0.0.1:{port}")):
            bad = subprocess.run([sys.executable, "-c", client.replace("60s", "5s"), addr],
                                 env=env, capture_output=True, text=True, timeout=120)
            assert bad.returncode != 0, (addr, bad.stdout)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# --------------------------------------------------------------------------- Helm post-renderer

POST_RENDER = DEPLOY / "helm" / "post-render.sh"


def render_dask_chart(values: dict[str, Any], release: str = "obpipe-dask"
                      ) -> list[dict[str, Any]]:
    """The scheduler and worker Deployments of the dask chart (templates
    dask-scheduler-deployment.yaml / dask-worker-deployment.yaml at commit e581ea8, the one
    CHART_KEYS lists) for ``values``: the fields those templates write, as helm template
    would (this machine has no helm; kubectl's kustomize applies the post-renderer)."""
    full = f"{release}"  # dask.fullname: the release name when it contains the chart name
    s, w = values["scheduler"], values["worker"]
    labels = {"app": "dask", "release": release}

    def deployment(component: str, pod: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": f"{full}-{component}",
                             "labels": {**labels, "heritage": "Helm", "chart": "dask",
                                        "component": component}},
                "spec": {"replicas": (s if component == "scheduler" else w).get("replicas", 1),
                         "selector": {"matchLabels": {**labels, "component": component}},
                         "template": {"metadata": {"labels": {**labels,
                                                              "component": component}},
                                      "spec": pod}}}

    sched = {"name": f"{full}-scheduler",
             "image": f"{s['image']['repository']}:{s['image']['tag']}",
             "imagePullPolicy": s["image"]["pullPolicy"],
             "args": ["dask-scheduler", f"--port={s['servicePort']}",
                      "--dashboard-address=:8787", *s.get("extraArgs", [])],
             "ports": [{"containerPort": 8786}, {"containerPort": 8787}],
             **{k: s[k] for k in ("resources", "env", "livenessProbe", "readinessProbe")
                if s.get(k)}}
    limits = w["resources"]["limits"]
    worker = {"name": f"{full}-worker",
              "image": f"{w['image']['repository']}:{w['image']['tag']}",
              "imagePullPolicy": w["image"]["pullPolicy"],
              "args": [w["image"]["dask_worker"], f"{full}-scheduler:{s['servicePort']}",
                       "--nthreads", str(w.get("threads_per_worker") or limits["cpu"]),
                       "--memory-limit", str(limits["memory"]), "--no-dashboard",
                       "--dashboard-address", str(w.get("portDashboard", 8790))],
              "ports": [{"containerPort": int(w.get("portDashboard", 8790)),
                         "name": "dashboard"}],
              **{k: w[k] for k in ("resources", "env") if w.get(k)}}
    if w.get("mounts", {}).get("volumeMounts"):
        worker["volumeMounts"] = w["mounts"]["volumeMounts"]
    s_pod = {"containers": [sched], "securityContext": s["securityContext"]}
    w_pod = {"containers": [worker], "securityContext": w["securityContext"],
             **({"volumes": w["mounts"]["volumes"]} if w.get("mounts", {}).get("volumes")
                else {})}
    return [deployment("scheduler", s_pod), deployment("worker", w_pod)]


def post_render(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = subprocess.run([str(POST_RENDER)], input=yaml.safe_dump_all(docs), text=True,
                         capture_output=True, check=True, timeout=120).stdout
    return [d for d in yaml.load_all(out, Loader=_LOADER) if d]


@pytest.mark.skipif(not shutil.which("kubectl"), reason="needs kubectl (its kustomize)")
def test_helm_post_renderer_hardens_the_chart_pods() -> None:
    """With the post-renderer, the chart's scheduler and worker pods get the container
    securityContext of the operator manifests, no service-account token, /tmp and the TLS
    Secret mounted, and Dask TLS settings for their role; valid Kubernetes objects."""
    values = helm_values()
    rendered = render_dask_chart(values)
    # the chart alone: no container securityContext, the token mounted
    for doc in rendered:
        pod = doc["spec"]["template"]["spec"]
        assert "automountServiceAccountToken" not in pod
        assert any("allowPrivilegeEscalation is not false" in p
                   for p in pod_problems("chart", pod))
    out = post_render(rendered)
    assert sorted(d["metadata"]["name"] for d in out) == ["obpipe-dask-scheduler",
                                                          "obpipe-dask-worker"]
    for doc in out:
        assert _core_errors(doc) == [], doc["metadata"]["name"]
        pod = doc["spec"]["template"]["spec"]
        component = doc["metadata"]["labels"]["component"]
        assert pod["automountServiceAccountToken"] is False
        assert pod_problems(component, pod) == []
        (c,) = pod["containers"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/tmp"]]["emptyDir"]
        assert volumes[mounts[TLS_DIR]]["secret"]["secretName"] == TLS_SECRET
        env = {e["name"]: e.get("value") for e in c["env"]}
        role = component.upper()
        assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "true"
        assert env["DASK_DISTRIBUTED__COMM__DEFAULT_SCHEME"] == "tls"  # worker's address
        assert env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"] == f"{TLS_DIR}/tls.crt"
        if component == "scheduler":
            assert c["args"][-2:] == ["--protocol", "tls"]
