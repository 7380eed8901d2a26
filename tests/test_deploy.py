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
from obpipe.products import open_products

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
    else:
        problems += _core_errors(doc)
    for where, kind, spec in embedded_specs(doc):
        problems += (pod_problems(where, spec) if kind == "Pod"
                     else service_problems(where, spec))
    return problems


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for _, kind, spec in embedded_specs(doc) if kind == "Pod"
            for c in spec.get("containers", [])]


# --------------------------------------------------------------------------- manifests


def test_every_manifest_is_valid() -> None:
    docs = manifests()
    kinds = sorted(doc["kind"] for _, doc in docs)
    assert {"DaskCluster", "DaskJob", "Namespace", "Secret"} <= set(kinds), kinds
    for name, doc in docs:
        assert check_manifest(doc) == [], name
        assert doc["metadata"].get("namespace", "obpipe") == "obpipe", name


def _set(doc: dict[str, Any], path: str | tuple[str, ...], value: Any) -> None:
    """Set (or delete, value ``_DELETE``) the item at a dotted path or a tuple of keys."""
    *parents, last = path.split(".") if isinstance(path, str) else path
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
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
    # the operator injects DASK_SCHEDULER_ADDRESS into the runner and Kubernetes expands
    # $(...) before the container starts: parse what the container receives
    placeholder = "$(DASK_SCHEDULER_ADDRESS)"
    assert placeholder in argv
    address = "tcp://obpipe-cluster-scheduler.obpipe.svc.cluster.local:8786"
    argv = [address if a == placeholder else a for a in argv]
    args = build_parser().parse_args(argv)  # the CLI the image installs accepts them
    assert args.command == "run"
    assert args.address == address
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
                # no positional scheduler: it is DASK_SCHEDULER_ADDRESS, set by the operator
                assert ctx.params["scheduler"] is None
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
    (("worker", "env", "0", "valueFrom", "secretKeyRef", "nam"), "x", "'nam' was unexpected"),
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
