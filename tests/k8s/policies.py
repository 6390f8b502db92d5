"""Policy checks for rendered Kubernetes manifests: small functions, each returning a list of violations.

Every check takes rendered objects (dicts, as `kubectl kustomize` prints them) and says what is wrong
and where (`Kind/name: container x ...`); an empty list means the manifests pass. The tests run each
check on the real overlays and on a deliberately broken copy, so none of them can pass vacuously.
"""

import base64
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

K8S_DIR = Path(__file__).resolve().parents[2] / "k8s"
KUBERNETES_VERSION = "1.32.0"  # the oldest Kubernetes the manifests target (HPA v2, PDB v1, CronJob timeZone)
NEWEST_KUBERNETES_VERSION = "1.37.0"  # the newest schemas kubernetes-validate 1.37.0 ships (catches removals)
PYTORCHJOB_SCHEMA = K8S_DIR / "schemas" / "kubeflow.org_v1_pytorchjob.json"
SPARKAPPLICATION_SCHEMA = K8S_DIR / "schemas" / "sparkoperator.k8s.io_v1beta2_sparkapplication.json"
CRD_SCHEMAS = {"PyTorchJob": PYTORCHJOB_SCHEMA, "SparkApplication": SPARKAPPLICATION_SCHEMA}
SPARK_ROLES = ("driver", "executor")
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet"}
WORKLOADS = LONG_RUNNING | {"Job", "CronJob", "Pod", "PyTorchJob", "SparkApplication"}
PART_OF = "app.kubernetes.io/part-of"

Obj = dict[str, Any]


class RenderError(RuntimeError):
    """`kubectl kustomize` failed for an overlay; the message carries its stderr."""


# ------------------------------------------------------------------------------------------------ rendering
def render(overlay: str | Path) -> list[Obj]:
    """Build a kustomization with `kubectl kustomize` (offline) and parse every object."""
    path = Path(overlay) if Path(overlay).is_absolute() else K8S_DIR / overlay
    proc = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RenderError(f"kubectl kustomize {path} failed: {proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def name_of(obj: Obj) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def pod_templates(obj: Obj) -> Iterator[tuple[str, Obj]]:
    """(where, pod template {metadata, spec}) of every pod an object creates."""
    kind, spec = obj.get("kind"), obj.get("spec", {})
    if kind in LONG_RUNNING or kind == "Job":
        yield name_of(obj), spec.get("template", {})
    elif kind == "CronJob":
        yield name_of(obj), spec.get("jobTemplate", {}).get("spec", {}).get("template", {})
    elif kind == "Pod":
        yield name_of(obj), {"metadata": obj.get("metadata", {}), "spec": spec}
    elif kind == "PyTorchJob":
        for replica, rspec in spec.get("pytorchReplicaSpecs", {}).items():
            yield f"{name_of(obj)}[{replica}]", rspec.get("template", {})
    elif kind == "SparkApplication":
        for role in SPARK_ROLES:
            yield f"{name_of(obj)}[{role}]", spark_pod_template(obj, role)


def spark_memory(value: str) -> str:
    """Spark's memory notation (512m, 4g) as a Kubernetes quantity (512Mi, 4Gi)."""
    m = re.fullmatch(r"(\d+)([kmgt])b?", str(value).lower())
    return f"{m[1]}{m[2].upper()}i" if m else str(value)


def spark_pod_template(app: Obj, role: str) -> Obj:
    """The pod the Spark Operator makes for a SparkApplication's driver or executors, in the fields the checks read:
    the role's labels, service account, security contexts, env, mounts, sidecars and init containers, the
    application's volumes and image; cpu request from coreRequest (else cores), cpu limit from coreLimit, memory
    request and limit from memory (Spark adds its overhead to both)."""
    spec = app.get("spec", {})
    pod = spec.get(role) or {}
    resources: Obj = {"requests": {}, "limits": {}}
    if pod.get("coreRequest") or pod.get("cores"):
        resources["requests"]["cpu"] = str(pod.get("coreRequest") or pod["cores"])
    if pod.get("coreLimit"):
        resources["limits"]["cpu"] = str(pod["coreLimit"])
    if pod.get("memory"):
        resources["requests"]["memory"] = resources["limits"]["memory"] = spark_memory(pod["memory"])
    main = {"name": f"spark-kubernetes-{role}", "image": pod.get("image") or spec.get("image", ""),
            "resources": resources}
    main.update({k: pod[k] for k in ("env", "envFrom", "volumeMounts", "securityContext", "ports") if k in pod})
    pod_spec: Obj = {"containers": [main, *pod.get("sidecars", [])], "volumes": spec.get("volumes", [])}
    renamed = {"serviceAccount": "serviceAccountName", "podSecurityContext": "securityContext"}
    for key in ("serviceAccount", "podSecurityContext", "initContainers", "nodeSelector", "tolerations", "affinity",
                "hostNetwork"):
        if key in pod:
            pod_spec[renamed.get(key, key)] = pod[key]
    return {"metadata": {"labels": pod.get("labels") or {}}, "spec": pod_spec}


def containers(pod_spec: Obj, init: bool = True) -> Iterator[Obj]:
    yield from pod_spec.get("containers", [])
    if init:
        yield from pod_spec.get("initContainers", [])


def selector_matches(selector: Obj | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels AND matchExpressions); an empty selector matches all."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# ----------------------------------------------------------------------------------------------- validation
def validate_object(obj: Obj, version: str = KUBERNETES_VERSION) -> list[str]:
    """Strict offline schema validation: built-in kinds with kubernetes-validate, PyTorchJob and SparkApplication
    with their CRD schemas."""
    if obj.get("kind") in CRD_SCHEMAS:
        return validate_custom_resource(obj, version)
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{name_of(obj)}: {err.message} at {list(err.path)}"]
    except kubernetes_validate.SchemaNotFoundError as err:
        return [f"{name_of(obj)}: no schema ({err.message})"]
    return []


def validate_custom_resource(obj: Obj, version: str = KUBERNETES_VERSION) -> list[str]:
    """The kind's vendored CRD schema, then each pod it makes (a PyTorchJob's replica templates, a SparkApplication's
    driver and executor pods) as a strict core/v1 PodTemplate."""
    schema = json.loads(CRD_SCHEMAS[obj["kind"]].read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    problems = [f"{name_of(obj)}: {e.message} at {list(e.absolute_path)}" for e in validator.iter_errors(obj)]
    for where, template in pod_templates(obj):
        wrapper = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "template"}, "template": template}
        try:
            kubernetes_validate.validate(wrapper, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{where}: pod template: {err.message} at {list(err.path)}")
    return problems


def check_pytorchjob_operator_rules(obj: Obj) -> list[str]:
    """What the Training Operator's admission webhook enforces: Master/Worker only, one Master, container `pytorch`."""
    if obj.get("kind") != "PyTorchJob":
        return []
    problems = []
    specs = obj.get("spec", {}).get("pytorchReplicaSpecs", {})
    for replica, rspec in specs.items():
        if replica not in ("Master", "Worker"):
            problems.append(f"{name_of(obj)}: replica type {replica!r} is not Master or Worker")
        names = [c.get("name") for c in rspec.get("template", {}).get("spec", {}).get("containers", [])]
        if "pytorch" not in names:
            problems.append(f"{name_of(obj)}[{replica}]: no container named 'pytorch' (got {names})")
    if "Master" in specs and specs["Master"].get("replicas", 1) != 1:
        problems.append(f"{name_of(obj)}: Master must have exactly 1 replica")
    return problems


# ---------------------------------------------------------------------------------------------------- pods
def check_resources(obj: Obj) -> list[str]:
    """Every container (init containers too) requests and limits cpu and memory."""
    problems = []
    for where, template in pod_templates(obj):
        for c in containers(template.get("spec", {})):
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                missing = [r for r in ("cpu", "memory") if r not in (res.get(part) or {})]
                if missing:
                    problems.append(f"{where}: container {c.get('name')} has no {part} for {', '.join(missing)}")
    return problems


def check_security(obj: Obj) -> list[str]:
    """Restricted pod security: non-root, read-only root FS, no privilege escalation, no capabilities, seccomp."""
    problems = []
    for where, template in pod_templates(obj):
        spec = template.get("spec", {})
        pod_sc = spec.get("securityContext") or {}
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{where}: uses host namespaces")
        for c in containers(spec):
            sc = c.get("securityContext") or {}
            label = f"{where}: container {c.get('name')}"
            if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot", False)):
                problems.append(f"{label} may run as root (runAsNonRoot is not true)")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
                problems.append(f"{label} runs as UID 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{label} has a writable root filesystem")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{label} allows privilege escalation")
            if sc.get("privileged"):
                problems.append(f"{label} is privileged")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                problems.append(f"{label} does not drop ALL capabilities")
            if caps.get("add"):
                problems.append(f"{label} adds capabilities {caps['add']}")
            seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{label} has seccompProfile {seccomp!r} (want RuntimeDefault)")
    return problems


def check_probes(obj: Obj) -> list[str]:
    """Long-running containers (Deployment, StatefulSet, DaemonSet) have readiness and liveness probes."""
    if obj.get("kind") not in LONG_RUNNING:
        return []
    problems = []
    for where, template in pod_templates(obj):
        for c in containers(template.get("spec", {}), init=False):
            ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if not c.get(probe):
                    if probe != "startupProbe":
                        problems.append(f"{where}: container {c.get('name')} has no {probe}")
                    continue
                action = c[probe].get("httpGet") or c[probe].get("tcpSocket") or c[probe].get("grpc") or {}
                if "port" in action and action["port"] not in ports:
                    problems.append(
                        f"{where}: container {c.get('name')} {probe} port {action['port']!r} is not declared"
                    )
    return problems


IMAGE_RE = re.compile(r"^(?P<repo>[^@\s]+?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


def image_problem(image: str) -> str | None:
    """Why an image reference is not pinned (None when it has a fixed tag or a digest)."""
    m = IMAGE_RE.match(image or "")
    if not m or "/" in (m.group("tag") or ""):
        return f"image {image!r} is not a valid reference"
    if m.group("digest"):
        return None
    if not m.group("tag"):
        return f"image {image!r} has no tag"
    if m.group("tag") == "latest":
        return f"image {image!r} uses the floating :latest tag"
    return None


def check_images(obj: Obj) -> list[str]:
    """Every image is pinned: a tag other than latest, or a digest."""
    problems = []
    for where, template in pod_templates(obj):
        for c in containers(template.get("spec", {})):
            problem = image_problem(c.get("image", ""))
            if problem:
                problems.append(f"{where}: container {c.get('name')}: {problem}")
    return problems


def check_part_of_label(obj: Obj) -> list[str]:
    """Every object carries the common part-of label (set once in the base kustomization)."""
    if PART_OF not in (obj.get("metadata", {}).get("labels") or {}):
        return [f"{name_of(obj)} has no {PART_OF} label"]
    return []


POD_CHECKS = (
    check_resources,
    check_security,
    check_probes,
    check_images,
    check_part_of_label,
    check_pytorchjob_operator_rules,
)


# -------------------------------------------------------------------------------------------- across objects
def _workloads(objs: list[Obj], kinds: set[str]) -> Iterator[tuple[Obj, dict[str, str]]]:
    for obj in objs:
        if obj.get("kind") in kinds:
            for _, template in pod_templates(obj):
                yield obj, template.get("metadata", {}).get("labels") or {}


def _namespace(obj: Obj) -> str | None:
    return obj.get("metadata", {}).get("namespace")


def check_pdb_coverage(objs: list[Obj]) -> list[str]:
    """Every Deployment and StatefulSet is covered by a PodDisruptionBudget in its namespace."""
    pdbs = [o for o in objs if o.get("kind") == "PodDisruptionBudget"]
    workloads = _workloads(objs, {"Deployment", "StatefulSet"})
    return [
        f"{name_of(obj)} has no PodDisruptionBudget"
        for obj, labels in workloads
        if not any(
            _namespace(p) == _namespace(obj) and selector_matches(p["spec"].get("selector"), labels) for p in pdbs
        )
    ]


def _is_default_deny(policy: Obj) -> bool:
    spec = policy.get("spec", {})
    return (
        spec.get("podSelector") == {}
        and set(spec.get("policyTypes", [])) == {"Ingress", "Egress"}
        and not spec.get("ingress")
        and not spec.get("egress")
    )


def check_networkpolicy_coverage(objs: list[Obj]) -> list[str]:
    """A default-deny policy exists per namespace, and each Deployment/StatefulSet has its own allow policy."""
    policies = [o for o in objs if o.get("kind") == "NetworkPolicy"]
    problems = []
    workloads = list(_workloads(objs, {"Deployment", "StatefulSet"}))
    for ns in sorted({_namespace(obj) or "" for obj, _ in workloads}):
        if not any(_is_default_deny(p) and (_namespace(p) or "") == ns for p in policies):
            problems.append(f"namespace {ns!r} has no default-deny NetworkPolicy")
    for obj, labels in workloads:
        specific = [
            p
            for p in policies
            if _namespace(p) == _namespace(obj)
            and p["spec"].get("podSelector")
            and selector_matches(p["spec"]["podSelector"], labels)
        ]
        if not specific:
            problems.append(f"{name_of(obj)} is selected by no NetworkPolicy of its own")
    return problems


def check_references(objs: list[Obj]) -> list[str]:
    """ConfigMaps, PVCs and ServiceAccounts that pods use exist in the rendered output; HPAs target a Deployment."""
    have = {(o.get("kind"), o.get("metadata", {}).get("name")) for o in objs}
    problems = []
    for obj in objs:
        for where, template in pod_templates(obj):
            spec = template.get("spec", {})
            claim_templates = {t["metadata"]["name"] for t in obj.get("spec", {}).get("volumeClaimTemplates", [])}
            sa = spec.get("serviceAccountName")
            if sa and ("ServiceAccount", sa) not in have:
                problems.append(f"{where}: ServiceAccount {sa!r} does not exist")
            for vol in spec.get("volumes", []):
                if "configMap" in vol and ("ConfigMap", vol["configMap"]["name"]) not in have:
                    problems.append(f"{where}: ConfigMap {vol['configMap']['name']!r} does not exist")
                claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
                if claim and ("PersistentVolumeClaim", claim) not in have:
                    problems.append(f"{where}: PersistentVolumeClaim {claim!r} does not exist")
            mounts = {m["name"] for c in containers(spec) for m in c.get("volumeMounts", [])}
            declared = {v["name"] for v in spec.get("volumes", [])} | claim_templates
            for missing in sorted(mounts - declared):
                problems.append(f"{where}: volumeMount {missing!r} has no volume")
        if obj.get("kind") == "HorizontalPodAutoscaler":
            target = obj["spec"]["scaleTargetRef"]
            if (target["kind"], target["name"]) not in have:
                problems.append(f"{name_of(obj)}: scale target {target['kind']}/{target['name']} does not exist")
    return problems


def check_service_ports(objs: list[Obj]) -> list[str]:
    """Each Service selects pods of some workload, and each named targetPort is a port those pods declare."""
    problems = []
    workloads = list(_workloads(objs, WORKLOADS))
    for svc in (o for o in objs if o.get("kind") == "Service"):
        selector = svc["spec"].get("selector")
        if not selector:
            continue
        pods = [(obj, labels) for obj, labels in workloads if selector_matches({"matchLabels": selector}, labels)]
        if not pods:
            problems.append(f"{name_of(svc)} selects no pods")
            continue
        declared = set()
        for obj, _ in pods:
            for _, template in pod_templates(obj):
                for c in containers(template.get("spec", {}), init=False):
                    for p in c.get("ports", []):
                        declared |= {p.get("name"), p["containerPort"]}
        for port in svc["spec"].get("ports", []):
            if port.get("targetPort", port["port"]) not in declared:
                problems.append(f"{name_of(svc)}: targetPort {port.get('targetPort')!r} is not a container port")
    return problems


SENSITIVE_ENV = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|(^|_)(KEY|AUTH)$", re.IGNORECASE)
SECRET_ASSIGNMENT = re.compile(
    r"(password|passwd|requirepass|secret|token|api[_-]?key|admin[_-]?key)[\"']?\s*[=:]\s*"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s,;&}]+)",
    re.IGNORECASE,
)
URL_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
MIN_SECRET_LEN = 8  # shorter Secret values would match ordinary text


def _secret_values(objs: list[Obj]) -> dict[tuple[str, str], str]:
    """(Secret name, key) -> decoded value, for every Secret of the rendered output."""
    values = {}
    for obj in objs:
        if obj.get("kind") == "Secret":
            for key, raw in (obj.get("data") or {}).items():
                values[(obj["metadata"]["name"], key)] = base64.b64decode(raw).decode("utf-8", "replace")
            for key, raw in (obj.get("stringData") or {}).items():
                values[(obj["metadata"]["name"], key)] = str(raw)
    return values


def _is_reference(value: str) -> bool:
    """An environment reference (${VAR}, $(VAR)) or an empty value: no secret in it."""
    return re.fullmatch(r"[\"']?(\$\{\w+\}|\$\(\w+\)|null|none|~)?[\"']?", value, re.IGNORECASE) is not None


def check_secrets_stay_in_secrets(objs: list[Obj]) -> list[str]:
    """Secret values live only in Secrets: no ConfigMap holds a Secret's value, a literal password/key assignment
    (a ${VAR} reference is fine) or a URL with a password; no container sets a secret-named variable to a literal
    value; every secretKeyRef names a Secret and key of the output (unless optional)."""
    problems = []
    secrets = _secret_values(objs)
    for obj in objs:
        if obj.get("kind") != "ConfigMap":
            continue
        for key, text in (obj.get("data") or {}).items():
            for (name, skey), value in secrets.items():
                if len(value) >= MIN_SECRET_LEN and value in text:
                    problems.append(f"{name_of(obj)}: {key} holds the value of Secret {name} ({skey})")
            for match in SECRET_ASSIGNMENT.finditer(text):
                if not _is_reference(match["value"]):
                    problems.append(f"{name_of(obj)}: {key} holds a literal secret ({match[1]}=...)")
            if URL_PASSWORD.search(text):
                problems.append(f"{name_of(obj)}: {key} holds a URL with a password")
    for obj in objs:
        for where, template in pod_templates(obj):
            for c in containers(template.get("spec", {})):
                for env in c.get("env", []):
                    if SENSITIVE_ENV.search(env["name"]) and env.get("value"):
                        problems.append(f"{where}: container {c['name']} sets {env['name']} to a literal value "
                                        "(use valueFrom.secretKeyRef)")
                    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                    if ref and not ref.get("optional") and (ref["name"], ref["key"]) not in secrets:
                        problems.append(f"{where}: container {c['name']} reads key {ref['key']!r} of Secret "
                                        f"{ref['name']!r}, which does not exist")
    return problems


OBJECTS_CHECKS = (
    check_pdb_coverage,
    check_networkpolicy_coverage,
    check_references,
    check_service_ports,
    check_secrets_stay_in_secrets,
)


def all_problems(objs: list[Obj]) -> list[str]:
    """Every policy violation of a rendered overlay (schema validation not included)."""
    problems = [p for obj in objs for check in POD_CHECKS for p in check(obj)]
    return problems + [p for check in OBJECTS_CHECKS for p in check(objs)]


# ------------------------------------------------------------------------------------------ network flows
Pod = tuple[str, dict[str, str]]  # (namespace, labels)


def _peer_matches(peer: Obj, policy_ns: str | None, pod: Pod) -> bool:
    ns, labels = pod
    if "ipBlock" in peer:
        return False  # pod-to-pod reasoning only; IP blocks stand for things outside the cluster
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": ns}):
            return False
    elif ns != policy_ns:
        return False
    return "podSelector" not in peer or selector_matches(peer["podSelector"], labels)


def _port_matches(rule: Obj, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    return any(p.get("port") in (None, port) and p.get("protocol", "TCP") == protocol for p in ports)


def _policy_types(policy: Obj) -> list[str]:
    """policyTypes, or the API default: Ingress, plus Egress when egress rules are given."""
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if spec.get("egress") else []))


def _side_allows(objs: list[Obj], pod: Pod, other: Pod, port: int, protocol: str, direction: str) -> bool:
    """Whether the policies of `pod`'s namespace let traffic leave (Egress) or enter (Ingress) it."""
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    selecting = [
        p
        for p in objs
        if p.get("kind") == "NetworkPolicy"
        and _namespace(p) == pod[0]
        and direction in _policy_types(p)
        and selector_matches(p["spec"].get("podSelector", {}), pod[1])
    ]
    if not selecting:
        return True  # not isolated in this direction
    for policy in selecting:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if _port_matches(rule, port, protocol) and (
                not peers or any(_peer_matches(peer, _namespace(policy), other) for peer in peers)
            ):
                return True
    return False


def flow_allowed(objs: list[Obj], src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    """NetworkPolicy semantics for one connection: the source may send it and the destination may accept it."""
    return _side_allows(objs, src, dst, port, protocol, "Egress") and _side_allows(
        objs, dst, src, port, protocol, "Ingress"
    )
