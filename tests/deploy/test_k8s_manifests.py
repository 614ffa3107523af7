"""deploy/k8s, checked offline: every manifest against the Kubernetes JSON schemas (strict: unknown fields fail)
that the kubernetes-validate package ships, and the manifests' contract with the code: probe paths are routes of
the app, ports and ConfigMap names are settings the service reads, the drain fits in the termination grace period,
the pod runs as the Dockerfile's user.

The kustomizations are rendered here by a small renderer (resources + JSON 6902 patches, all these files use);
where kubectl is installed, its `kubectl kustomize` output must be the same.
"""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]' (kubernetes-validate)")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
# The oldest and the newest Kubernetes schemas kubernetes-validate 1.37 ships: the manifests use only APIs that
# are stable over that range (apps/v1, policy/v1, autoscaling/v2, networking.k8s.io/v1).
K8S_VERSIONS = ("1.25", "1.37")
VARIANTS = {"gpu": (K8S, "cuda"), "cpu": (K8S / "cpu", "cpu")}
OPTIONAL = {"ingress.yaml"}  # in base/ but not in its resources: applied by hand where ingress-nginx runs
UVICORN_LAST_WAIT_S = 5  # service/server.py: timeout_graceful_shutdown after the service's own drain
GPU = "nvidia.com/gpu"


# --- loading and rendering ------------------------------------------------------------------------------------

def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_json6902(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    for op in ops:
        *parents, last = [_unescape(t) for t in op["path"].lstrip("/").split("/")]
        node: Any = doc
        for token in parents:
            node = node[int(token)] if isinstance(node, list) else node[token]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op["op"] == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif op["op"] == "replace":
                node[index] = copy.deepcopy(op["value"])
            elif op["op"] == "remove":
                del node[index]
            else:
                raise AssertionError(f"unsupported JSON patch op {op['op']}")
        else:
            if op["op"] in ("replace", "remove"):
                assert last in node, f"{op['op']} {op['path']}: no such field"
            if op["op"] in ("add", "replace"):
                node[last] = copy.deepcopy(op["value"])
            elif op["op"] == "remove":
                del node[last]
            else:
                raise AssertionError(f"unsupported JSON patch op {op['op']}")


def render(folder: Path) -> list[dict[str, Any]]:
    """What `kubectl kustomize folder` gives, for the features these kustomizations use."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unsupported = set(k) - {"apiVersion", "kind", "resources", "patches"}
    assert not unsupported, f"{folder}: extend render() in this test for {sorted(unsupported)}"
    docs: list[dict[str, Any]] = []
    for resource in k.get("resources", []):
        path = (folder / resource).resolve()
        docs += render(path) if path.is_dir() else load_docs(path)
    for patch in k.get("patches", []):
        target = patch["target"]
        matches = [d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        assert len(matches) == 1, f"{folder}: patch target {target} matches {len(matches)} resources"
        apply_json6902(matches[0], yaml.safe_load(patch["patch"]))
    return docs


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def _sorted(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(docs, key=lambda d: (d["kind"], d["metadata"]["name"]))


# --- what the code says ---------------------------------------------------------------------------------------

def settings_fields() -> dict[str, Any]:
    from service.settings import Settings
    return {name: field.default for name, field in Settings.model_fields.items()}


def app_get_routes() -> set[str]:
    from service.app import create_app
    from service.settings import Settings
    return {r.path for r in create_app(Settings()).routes if "GET" in (getattr(r, "methods", None) or ())}


def dockerfile_user() -> tuple[int, int]:
    """uid and gid of the Dockerfile's last USER (numeric, or a name created with useradd --uid/--gid)."""
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users, "the Dockerfile has no USER"
    user, _, group = users[-1].partition(":")

    def number(name: str, flag: str) -> int:
        if name.isdigit():
            return int(name)
        m = re.search(rf"useradd[^\n]*--{flag}\s+(\d+)[^\n]*\s{re.escape(name)}\b", text)
        assert m, f"Dockerfile: cannot find the {flag} of {name!r}"
        return int(m.group(1))

    uid = number(user, "uid")
    return uid, number(group, "gid") if group else uid


def nginx_size(value: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", value.strip())
    assert m, f"not an nginx size: {value!r}"
    return int(m.group(1)) * 1024 ** " kmg".index((m.group(2) or " ").lower())


def prestop_seconds(container: dict[str, Any]) -> float:
    pre = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = pre.get("exec", {}).get("command", [])
    if len(command) == 2 and command[0].endswith("sleep"):
        return float(command[1])
    return 0.0


# --- the contract ---------------------------------------------------------------------------------------------

def contract_problems(docs: list[dict[str, Any]], device: str, ingress: dict[str, Any] | None = None) -> list[str]:
    """Everything about these manifests that must agree with service/, the Dockerfile and each other."""
    from service.settings import Settings

    problems: list[str] = []
    fields, routes = settings_fields(), app_get_routes()
    kinds = by_kind(docs)
    for kind in ("ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
        if len(kinds.get(kind, [])) != 1:
            problems.append(f"expected one {kind}, found {len(kinds.get(kind, []))}")
    if problems:
        return problems
    (cm,), (dep,), (svc,) = kinds["ConfigMap"], kinds["Deployment"], kinds["Service"]
    (pdb,), (hpa,) = kinds["PodDisruptionBudget"], kinds["HorizontalPodAutoscaler"]

    # ConfigMap: only DCN_* settings that exist, with values the service accepts
    data = cm.get("data", {})
    for name in data:
        if not name.startswith("DCN_") or name[4:].lower() not in fields:
            problems.append(f"ConfigMap {name}: not a setting in service/settings.py (it would be ignored)")
    known = {k[4:].lower(): v for k, v in data.items() if k.startswith("DCN_") and k[4:].lower() in fields}
    try:
        settings = Settings(**known)
    except ValidationError as e:
        problems.append(f"ConfigMap values rejected by Settings: {e}")
        settings = Settings()
    if settings.device != device:
        problems.append(f"DCN_DEVICE is {settings.device!r}, expected {device!r} for this variant")

    # Deployment
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    if spec.get("replicas", 1) < 2:
        problems.append("Deployment: fewer than 2 replicas")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    if spec["selector"]["matchLabels"].items() - pod_labels.items():
        problems.append("Deployment: selector does not match the pod template's labels")
    if pod.get("enableServiceLinks") is not False:
        problems.append("Deployment: enableServiceLinks must be false (Service env vars could collide with DCN_*)")
    containers = pod["containers"]
    if len(containers) != 1:
        return problems + ["Deployment: expected one container"]
    (c,) = containers
    if c["image"].rsplit("/", 1)[-1].split(":")[0].split("@")[0] != "deep-complex-networks":
        problems.append(f"container image {c['image']!r} is not deep-complex-networks")
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    if list(ports.values()) != [fields["port"]] or settings.port != fields["port"]:
        problems.append(f"container ports {ports} / DCN_PORT {settings.port}: the service listens on "
                        f"{fields['port']} (service/settings.py)")

    def port_of(ref: Any) -> Any:
        return ports.get(ref) if isinstance(ref, str) else ref

    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", None)):
        get = c.get(probe, {}).get("httpGet")
        if get is None:
            problems.append(f"{probe}: missing (or not httpGet)")
            continue
        if get["path"] not in routes:
            problems.append(f"{probe}: GET {get['path']} is not a route of service.app")
        if path and get["path"] != path:
            problems.append(f"{probe}: path {get['path']}, expected {path}")
        if port_of(get["port"]) != fields["port"]:
            problems.append(f"{probe}: port {get['port']} is not the service's port")
    startup = c.get("startupProbe", {})
    if startup and startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) < 120:
        problems.append("startupProbe: allows less than 120 s for loading and warming up the models")
    refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
    if refs != [cm["metadata"]["name"]]:
        problems.append(f"container envFrom {refs}: expected the ConfigMap {cm['metadata']['name']}")
    for e in c.get("env", []):
        if e["name"].startswith("DCN_") and e["name"][4:].lower() not in fields:
            problems.append(f"container env {e['name']}: not a setting in service/settings.py")

    # Shutdown: preStop sleep, then the service's drain, then uvicorn's last wait, all before SIGKILL
    needed = prestop_seconds(c) + settings.shutdown_grace_s + UVICORN_LAST_WAIT_S
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= needed:
        problems.append(f"terminationGracePeriodSeconds {grace} <= preStop + DCN_SHUTDOWN_GRACE_S + "
                        f"{UVICORN_LAST_WAIT_S} = {needed:g}")
    if prestop_seconds(c) <= 0:
        problems.append("no preStop sleep: the pod could get SIGTERM before it leaves the endpoints")

    # Security: the Dockerfile's user, non-root, read-only root with writable scratch for what writes
    uid, gid = dockerfile_user()
    sec = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
    if (sec.get("runAsUser"), sec.get("runAsGroup")) != (uid, gid):
        problems.append(f"runAsUser/runAsGroup {sec.get('runAsUser')}/{sec.get('runAsGroup')} != the "
                        f"Dockerfile's USER {uid}:{gid}")
    if sec.get("runAsNonRoot") is not True or sec.get("allowPrivilegeEscalation") is not False:
        problems.append("securityContext: runAsNonRoot true and allowPrivilegeEscalation false expected")
    mounts = {m["mountPath"] for m in c.get("volumeMounts", []) if not m.get("readOnly")}
    if sec.get("readOnlyRootFilesystem"):
        env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
        for path in ("/tmp", env.get("NUMBA_CACHE_DIR", "/tmp")):
            if not any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts):
                problems.append(f"readOnlyRootFilesystem: {path} is not on a writable volume")

    # Resources: one GPU per replica on the GPU variant, none on the CPU variant
    res = c.get("resources", {})
    gpus = {part: res.get(part, {}).get(GPU) for part in ("requests", "limits")}
    if device == "cuda" and gpus["limits"] != 1:
        problems.append(f"resources: expected {GPU}: 1 in limits, got {gpus}")
    if device == "cpu" and any(gpus.values()):
        problems.append(f"resources: the CPU variant requests {GPU}")
    for part in ("requests", "limits"):
        if not {"cpu", "memory"} <= res.get(part, {}).keys():
            problems.append(f"resources.{part}: cpu and memory expected")

    # Service, PDB, HPA agree with the Deployment
    if svc["spec"].get("type", "ClusterIP") != "ClusterIP" or svc["spec"]["selector"].items() - pod_labels.items():
        problems.append("Service: ClusterIP selecting the Deployment's pods expected")
    svc_ports = [(p["port"], port_of(p["targetPort"])) for p in svc["spec"]["ports"]]
    if svc_ports != [(80, fields["port"])]:
        problems.append(f"Service ports {svc_ports}: expected 80 -> {fields['port']}")
    if pdb["spec"]["selector"]["matchLabels"].items() - pod_labels.items():
        problems.append("PodDisruptionBudget: selector does not match the Deployment's pods")
    target = hpa["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("Deployment", dep["metadata"]["name"]):
        problems.append("HorizontalPodAutoscaler: does not scale the Deployment")
    if not 2 <= hpa["spec"].get("minReplicas", 1) <= spec.get("replicas", 1) <= hpa["spec"]["maxReplicas"]:
        problems.append("HorizontalPodAutoscaler: expected 2 <= minReplicas <= replicas <= maxReplicas")

    # Ingress (optional file): body size = DCN_MAX_UPLOAD_BYTES, timeouts cover a live stream
    if ingress is not None:
        notes = ingress["metadata"].get("annotations", {})
        size = notes.get("nginx.ingress.kubernetes.io/proxy-body-size")
        if size is None or nginx_size(size) != settings.max_upload_bytes:
            problems.append(f"Ingress proxy-body-size {size!r} != DCN_MAX_UPLOAD_BYTES {settings.max_upload_bytes}")
        for key in ("proxy-read-timeout", "proxy-send-timeout"):
            value = notes.get(f"nginx.ingress.kubernetes.io/{key}")
            if value is None or float(value) < settings.stream_max_seconds:
                problems.append(f"Ingress {key} {value!r} < DCN_STREAM_MAX_SECONDS {settings.stream_max_seconds:g}")
        for rule in ingress["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                backend = p["backend"]["service"]
                if backend["name"] != svc["metadata"]["name"] or backend["port"].get("name", "http") not in {
                        sp.get("name") for sp in svc["spec"]["ports"]}:
                    problems.append(f"Ingress backend {backend} is not the Service's port")
    return problems


# --- tests ----------------------------------------------------------------------------------------------------

def test_kustomizations_reference_existing_files_and_every_manifest():
    referenced: set[Path] = set()
    for k in kustomizations():
        data = yaml.safe_load(k.read_text())
        assert data["kind"] == "Kustomization" and data["resources"], k
        for resource in data["resources"]:
            path = (k.parent / resource).resolve()
            assert path.exists(), f"{k.relative_to(ROOT)}: resource {resource} does not exist"
            if path.is_dir():
                assert (path / "kustomization.yaml").is_file(), f"{k}: {resource} is not a kustomization"
            referenced.add(path)
    for path in manifest_files():
        assert path in referenced or path.name in OPTIONAL, f"{path.relative_to(ROOT)} is in no kustomization"
    assert {p.relative_to(K8S).as_posix() for p in kustomizations()} >= {
        "kustomization.yaml", "cpu/kustomization.yaml", "base/kustomization.yaml"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.relative_to(K8S).as_posix())
def test_manifest_file_is_valid_kubernetes(path: Path, version: str):
    docs = load_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_variant_is_valid_kubernetes(variant: str, version: str):
    for doc in render(VARIANTS[variant][0]):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendering_matches_kubectl_kustomize(variant: str):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the rendering here still ran)")
    proc = subprocess.run([kubectl, "kustomize", str(VARIANTS[variant][0])], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    theirs = [d for d in yaml.safe_load_all(proc.stdout) if d is not None]
    assert _sorted(theirs) == _sorted(render(VARIANTS[variant][0]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_manifests_agree_with_the_code(variant: str):
    folder, device = VARIANTS[variant]
    (ingress,) = load_docs(BASE / "ingress.yaml")
    assert contract_problems(render(folder), device, ingress) == []


def test_cpu_variant_differs_from_gpu_only_where_intended():
    gpu, cpu = by_kind(render(K8S)), by_kind(render(K8S / "cpu"))
    assert gpu.keys() == cpu.keys()
    assert {k: v for k, v in gpu["ConfigMap"][0]["data"].items() if k not in ("DCN_DEVICE", "DCN_TORCH_THREADS")} \
        == {k: v for k, v in cpu["ConfigMap"][0]["data"].items() if k not in ("DCN_DEVICE", "DCN_TORCH_THREADS")}
    gpu_pod, cpu_pod = gpu["Deployment"][0]["spec"]["template"]["spec"], cpu["Deployment"][0]["spec"]["template"]["spec"]
    assert "tolerations" in gpu_pod and "tolerations" not in cpu_pod
    cpu_limit = cpu_pod["containers"][0]["resources"]["limits"]["cpu"]
    assert cpu["ConfigMap"][0]["data"]["DCN_TORCH_THREADS"] == str(cpu_limit), \
        "CPU variant: DCN_TORCH_THREADS should match the CPU limit (torch's default follows the node's cores)"
    for pod in (gpu_pod, cpu_pod):
        pod.pop("tolerations", None)
        pod["containers"][0].pop("resources")
    assert gpu_pod == cpu_pod


# --- the checks do fail on broken manifests -------------------------------------------------------------------

def _deployment() -> dict[str, Any]:
    (dep,) = load_docs(BASE / "deployment.yaml")
    return dep


@pytest.mark.parametrize("break_it, message", [
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].update(pathh="/readyz"),
     "pathh"),  # a misspelt field: only the strict schema catches it
    (lambda d: d["spec"].update(replicas="two"), "two"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"), "name"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(protocol=6), "6"),
    (lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriod=45), "terminationGracePeriod"),
], ids=["unknown-field", "wrong-type", "missing-required", "bad-protocol-type", "misspelt-pod-field"])
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_validator_rejects_invalid_manifests(break_it, message: str, version: str):
    dep = _deployment()
    kubernetes_validate.validate(dep, version, strict=True)  # the real one passes
    break_it(dep)
    with pytest.raises(kubernetes_validate.ValidationError) as err:
        kubernetes_validate.validate(dep, version, strict=True)
    assert message in str(err.value.message) or message in str(err.value.path) or message in str(err.value)


def test_validator_rejects_unknown_kind_or_api_version():
    with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
        kubernetes_validate.validate({"apiVersion": "extensions/v1beta1", "kind": "Deployment",
                                      "metadata": {"name": "x"}}, K8S_VERSIONS[-1], strict=True)


def _pod(docs):
    return by_kind(docs)["Deployment"][0]["spec"]["template"]["spec"]


def _container(docs):
    return _pod(docs)["containers"][0]


@pytest.mark.parametrize("break_it, expected", [
    (lambda d: _container(d)["readinessProbe"]["httpGet"].update(path="/ready"), "readinessProbe"),
    (lambda d: _container(d)["livenessProbe"]["httpGet"].update(path="/readyz"), "livenessProbe: path /readyz"),
    (lambda d: by_kind(d)["ConfigMap"][0]["data"].update(DCN_SHUTDOWN_GRACE_SECONDS="20"), "not a setting"),
    (lambda d: by_kind(d)["ConfigMap"][0]["data"].update(DCN_DEVICE="gpu"), "rejected by Settings"),
    (lambda d: by_kind(d)["ConfigMap"][0]["data"].update(DCN_SHUTDOWN_GRACE_S="60"), "terminationGracePeriodSeconds"),
    (lambda d: _pod(d).update(terminationGracePeriodSeconds=30), "terminationGracePeriodSeconds"),
    (lambda d: _container(d)["ports"][0].update(containerPort=8080), "container ports"),
    (lambda d: by_kind(d)["Service"][0]["spec"]["ports"][0].update(targetPort=8080), "Service ports"),
    (lambda d: _pod(d)["securityContext"].update(runAsUser=1000), "runAsUser"),
    (lambda d: _container(d).pop("volumeMounts"), "writable volume"),
    (lambda d: _container(d)["resources"]["limits"].pop("nvidia.com/gpu"), "nvidia.com/gpu"),
    (lambda d: by_kind(d)["Deployment"][0]["spec"].update(replicas=1), "replicas"),
    (lambda d: _pod(d).pop("enableServiceLinks"), "enableServiceLinks"),
], ids=["readiness-path", "liveness-on-readyz", "unknown-setting", "bad-setting-value", "grace-too-long",
        "pod-grace-too-short", "container-port", "service-target-port", "uid", "no-tmp-volume", "no-gpu",
        "one-replica", "service-links"])
def test_contract_check_catches_broken_manifests(break_it, expected: str):
    docs = render(K8S)
    break_it(docs)
    problems = contract_problems(docs, "cuda")
    assert any(expected in p for p in problems), problems


def test_contract_check_catches_a_mismatched_ingress():
    (ingress,) = load_docs(BASE / "ingress.yaml")
    ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] = "1m"
    ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] = "60"
    problems = contract_problems(render(K8S), "cuda", ingress)
    assert any("proxy-body-size" in p for p in problems) and any("proxy-read-timeout" in p for p in problems)
