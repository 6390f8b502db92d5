"""The Kubernetes manifests: both overlays build offline, validate strictly, and pass the platform policies.

No cluster is needed: `kubectl kustomize` renders, kubernetes-validate checks built-in kinds against the
pinned Kubernetes version, the vendored CRD schema checks the PyTorchJob, and tests/k8s/policies.py checks
security, resources, probes, images, disruption budgets and network policies. Each policy check is also
run on a broken manifest to show that it rejects it.
"""

import base64
import copy
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from components.config import load_config
from components.features import REDIS_PASSWORD_SECRET
from components.request_log_pg import PASSWORD_ENV, PASSWORD_SECRET
from serving.triton_admin import ADMIN_KEY_ENV, ADMIN_KEY_SECRET, HEADER, RESTRICTED_PROTOCOLS
from tests.conftest import KUBECTL_MISSING
from tests.k8s import policies as P

OVERLAYS = ("overlays/local", "overlays/gpu", "overlays/spark")
NAMESPACE = "recsys"
needs_kubectl = KUBECTL_MISSING
_CACHE: dict[str, list[dict]] = {}


def rendered(overlay: str) -> list[dict]:
    if overlay not in _CACHE:
        _CACHE[overlay] = P.render(overlay)
    return copy.deepcopy(_CACHE[overlay])


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def container(obj: dict, name: str) -> dict:
    for _, template in P.pod_templates(obj):
        for c in P.containers(template["spec"]):
            if c["name"] == name:
                return c
    raise KeyError(f"{P.name_of(obj)} has no container {name}")


# ------------------------------------------------------------------------------------------ the real overlays
@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_with_every_part(overlay):
    objs = rendered(overlay)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for expected in [
        ("Namespace", NAMESPACE),
        ("Deployment", "triton"),
        ("Service", "triton"),
        ("Deployment", "recsys-api"),
        ("Service", "recsys-api"),
        ("HorizontalPodAutoscaler", "recsys-api"),
        ("Deployment", "feast"),
        ("Service", "feast"),
        ("StatefulSet", "redis"),
        ("Service", "redis"),
        ("StatefulSet", "postgres"),
        ("Service", "postgres"),
        ("Secret", "recsys-request-log-db"),
        ("Secret", REDIS_PASSWORD_SECRET),
        ("Secret", ADMIN_KEY_SECRET),
        ("CronJob", "recsys-log-prune"),
        ("CronJob", "recsys-monitoring"),
        ("PyTorchJob", "recsys-finetune"),
        ("ServiceAccount", "recsys-pipeline-runner"),
        ("Role", "recsys-pipeline-runner"),
        ("RoleBinding", "recsys-pipeline-runner"),
        ("NetworkPolicy", "default-deny-all"),
    ]:
        assert expected in names, f"{overlay} lacks {expected}"
    assert any(k == "ConfigMap" and n.startswith("feast-config-") for k, n in names)
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{P.name_of(obj)} is not in {NAMESPACE}"


@needs_kubectl
@pytest.mark.parametrize("version", [P.KUBERNETES_VERSION, P.NEWEST_KUBERNETES_VERSION])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(overlay, version):
    problems = [p for obj in rendered(overlay) for p in P.validate_object(obj, version)]
    assert problems == []


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_policy_holds(overlay):
    assert P.all_problems(rendered(overlay)) == []


def _gpus(obj: dict) -> dict[str, str]:
    found = {}
    for where, template in P.pod_templates(obj):
        for c in P.containers(template["spec"]):
            limit = (c.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu")
            if limit is not None:
                found[f"{where}/{c['name']}"] = str(limit)
    return found


@needs_kubectl
def test_gpus_only_in_the_gpu_overlay():
    assert [g for obj in rendered("overlays/local") for g in _gpus(obj)] == []
    gpu = rendered("overlays/gpu")
    assert _gpus(by_kind(gpu, "Deployment")["triton"]) == {"Deployment/triton/triton": "1"}
    job = by_kind(gpu, "PyTorchJob")["recsys-finetune"]
    assert _gpus(job) == {
        "PyTorchJob/recsys-finetune[Master]/pytorch": "1",
        "PyTorchJob/recsys-finetune[Worker]/pytorch": "1",
    }
    assert job["spec"]["nprocPerNode"] == "gpu"
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        args = replica["template"]["spec"]["containers"][0]["args"]
        assert "--set=train.device=cuda" in args and "--set=model.fine_tune_encoder=true" in args
        assert "--set=model.text_encoder=all-MiniLM-L6-v2" in args  # the GPU tunes the transformer


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_come_from_the_config(overlay):
    config = load_config()
    objs = rendered(overlay)
    for name in ("recsys-api", "feast"):
        for _, template in P.pod_templates(by_kind(objs, "Deployment")[name]):
            assert {c["image"] for c in P.containers(template["spec"])} == {config.kfp.image}
    assert container(by_kind(objs, "CronJob")["recsys-monitoring"], "monitoring")["image"] == config.kfp.image
    job = by_kind(objs, "PyTorchJob")["recsys-finetune"]
    want = config.kfp.gpu_image if overlay.endswith("gpu") else config.kfp.image
    replicas = job["spec"]["pytorchReplicaSpecs"].values()
    assert {r["template"]["spec"]["containers"][0]["image"] for r in replicas} == {want}
    assert re.fullmatch(
        r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3",
        container(by_kind(objs, "Deployment")["triton"], "triton")["image"],
    )


@needs_kubectl
def test_triton_and_api_health_endpoints_and_ports():
    objs = rendered("overlays/gpu")
    triton = by_kind(objs, "Deployment")["triton"]
    c = container(triton, "triton")
    assert {p["containerPort"] for p in c["ports"]} == {8000, 8001, 8002}
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8002"
    api = container(by_kind(objs, "Deployment")["recsys-api"], "api")
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    hpa = by_kind(objs, "HorizontalPodAutoscaler")["recsys-api"]
    assert hpa["spec"]["minReplicas"] >= 2  # with minAvailable 1 in the PDB, a drain keeps the API up


def _configmap_file(objs: list[dict], prefix: str, key: str) -> str:
    maps = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(prefix + "-")]
    assert len(maps) == 1, f"expected one generated ConfigMap {prefix}-<hash>"
    return maps[0]["data"][key]


def service_port(objs: list[dict], address: str, port: int) -> str:
    """The Service behind an in-cluster address (name.namespace.svc.cluster.local); fails if it lacks the port."""
    name, namespace, *rest = address.split(".")
    assert rest[:1] == ["svc"] and namespace == NAMESPACE, f"{address} is not a Service address in {NAMESPACE}"
    service = by_kind(objs, "Service")[name]
    assert port in [p["port"] for p in service["spec"]["ports"]], f"Service {name} has no port {port}"
    return name


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cluster_config_is_a_valid_project_config(overlay, tmp_path):
    objs = rendered(overlay)
    path = tmp_path / "config.yaml"
    path.write_text(_configmap_file(objs, "recsys-config", "config.yaml"), encoding="utf-8")
    config = load_config(path)  # raises on an unknown key or a bad value
    # The addresses in the config are this overlay's Services, on the ports they expose.
    assert service_port(objs, config.serving.host, config.serving.triton_grpc_port) == "triton"
    assert service_port(objs, config.serving.host, config.serving.triton_http_port) == "triton"
    assert config.features.online_store == "redis"
    redis_host, redis_port = config.features.redis_connection.split(",")[0].rsplit(":", 1)
    assert service_port(objs, redis_host, int(redis_port)) == "redis"
    api = container(by_kind(objs, "Deployment")["recsys-api"], "api")
    assert {e["name"]: e.get("value") for e in api["env"]}["RECSYS_CONFIG"] == "/etc/recsys/config.yaml"
    assert str(config.serving.api_port) == api["command"][api["command"].index("--port") + 1]
    # The replicas share a PostgreSQL request log: the URL names the Service, its password is not in the ConfigMap
    # but in the Secret that every reader and writer of the log gets as RECSYS_REQUEST_LOG_PASSWORD.
    log_url = urlsplit(str(config.serving.request_log))
    assert log_url.scheme == "postgresql" and log_url.password is None
    assert service_port(objs, log_url.hostname, log_url.port) == "postgres"
    secret = by_kind(objs, "Secret")[PASSWORD_SECRET]
    assert "password" in secret["data"] and secret["metadata"]["namespace"] == NAMESPACE
    pg = container(by_kind(objs, "StatefulSet")["postgres"], "postgres")
    pg_env = {e["name"]: e for e in pg["env"]}
    assert pg_env["POSTGRES_USER"]["value"] == log_url.username and pg_env["POSTGRES_DB"]["value"] == log_url.path[1:]
    assert pg_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": PASSWORD_SECRET, "key": "password"}
    for kind, name, c in (("Deployment", "recsys-api", "api"), ("CronJob", "recsys-monitoring", "monitoring"),
                          ("CronJob", "recsys-log-prune", "prune")):
        env = {e["name"]: e for e in container(by_kind(objs, kind)[name], c)["env"]}
        assert env[PASSWORD_ENV]["valueFrom"]["secretKeyRef"] == {"name": PASSWORD_SECRET, "key": "password"}, name
    assert container(by_kind(objs, "CronJob")["recsys-log-prune"], "prune")["command"] == ["recsys", "log", "prune"]
    # Redis's password and Triton's admin key come from their Secrets to every pod that uses them.
    redis_ref = {"name": REDIS_PASSWORD_SECRET, "key": "password"}
    key_ref = {"name": ADMIN_KEY_SECRET, "key": "key"}
    for kind, name, c, wants in (
        ("Deployment", "recsys-api", "api", {config.features.redis_password_env: redis_ref}),
        ("Deployment", "feast", "feast", {config.features.redis_password_env: redis_ref}),
        ("CronJob", "recsys-monitoring", "monitoring",
         {config.features.redis_password_env: redis_ref, ADMIN_KEY_ENV: key_ref}),
        ("StatefulSet", "redis", "redis", {"RECSYS_REDIS_PASSWORD": redis_ref, "REDISCLI_AUTH": redis_ref}),
        ("Deployment", "triton", "triton", {ADMIN_KEY_ENV: key_ref}),
    ):  # fmt: skip
        env = {e["name"]: e for e in container(by_kind(objs, kind)[name], c)["env"]}
        for var, ref in wants.items():
            assert env[var]["valueFrom"]["secretKeyRef"] == ref, (name, var)
    api_env = {e["name"] for e in container(by_kind(objs, "Deployment")["recsys-api"], "api")["env"]}
    assert ADMIN_KEY_ENV not in api_env  # the API needs inference only
    redis_args = container(by_kind(objs, "StatefulSet")["redis"], "redis")["args"]
    assert redis_args[redis_args.index("--requirepass") + 1] == "$(RECSYS_REDIS_PASSWORD)"
    assert redis_args[redis_args.index("--protected-mode") + 1] == "yes"
    rule = f"{','.join(RESTRICTED_PROTOCOLS)}:{HEADER}=$({ADMIN_KEY_ENV})"
    triton_args = container(by_kind(objs, "Deployment")["triton"], "triton")["args"]
    assert {f"--grpc-restricted-protocol={rule}", f"--http-restricted-api={rule}"} <= set(triton_args)
    # Paths the pods write to are on the artifacts volume, mounted at /var/lib/recsys.
    for p in (
        config.paths.artifacts_dir,
        config.monitoring.reports_dir,
        config.serving.model_repository,
        config.features.data_dir,
    ):
        assert Path(p).is_relative_to("/var/lib/recsys"), p
    triton_mount = next(
        m
        for m in container(by_kind(objs, "Deployment")["triton"], "triton")["volumeMounts"]
        if m["mountPath"] == "/models"
    )
    assert Path("/var/lib/recsys") / triton_mount["subPath"] == Path(config.serving.model_repository)


def pod(objs: list[dict], kind: str, name: str, replica: str | None = None) -> P.Pod:
    obj = by_kind(objs, kind)[name]
    templates = dict(P.pod_templates(obj))
    where = f"{P.name_of(obj)}[{replica}]" if replica else P.name_of(obj)
    return obj["metadata"]["namespace"], templates[where]["metadata"]["labels"]


FLOWS_ALLOWED = [
    ("API -> Triton gRPC", ("Deployment", "recsys-api"), ("Deployment", "triton"), 8001),
    ("API -> Feast server", ("Deployment", "recsys-api"), ("Deployment", "feast"), 6566),
    ("API -> Redis (Feast SDK)", ("Deployment", "recsys-api"), ("StatefulSet", "redis"), 6379),
    ("Feast -> Redis", ("Deployment", "feast"), ("StatefulSet", "redis"), 6379),
    ("monitoring job -> Redis", ("CronJob", "recsys-monitoring"), ("StatefulSet", "redis"), 6379),
    ("monitoring job -> Triton HTTP", ("CronJob", "recsys-monitoring"), ("Deployment", "triton"), 8000),
    ("API -> request log", ("Deployment", "recsys-api"), ("StatefulSet", "postgres"), 5432),
    ("monitoring job -> request log", ("CronJob", "recsys-monitoring"), ("StatefulSet", "postgres"), 5432),
    ("prune job -> request log", ("CronJob", "recsys-log-prune"), ("StatefulSet", "postgres"), 5432),
    ("DDP master -> worker", ("PyTorchJob", "recsys-finetune", "Master"), ("PyTorchJob", "recsys-finetune", "Worker"),
     23456),
]  # fmt: skip
FLOWS_DENIED = [
    ("Feast -> Triton", ("Deployment", "feast"), ("Deployment", "triton"), 8001),
    ("Triton -> Redis", ("Deployment", "triton"), ("StatefulSet", "redis"), 6379),
    ("API -> Triton metrics", ("Deployment", "recsys-api"), ("Deployment", "triton"), 8002),
    ("Redis -> API", ("StatefulSet", "redis"), ("Deployment", "recsys-api"), 3000),
    ("Feast -> request log", ("Deployment", "feast"), ("StatefulSet", "postgres"), 5432),
    ("Triton -> request log", ("Deployment", "triton"), ("StatefulSet", "postgres"), 5432),
    ("prune job -> Redis", ("CronJob", "recsys-log-prune"), ("StatefulSet", "redis"), 6379),
    ("API -> fine-tuning pods", ("Deployment", "recsys-api"), ("PyTorchJob", "recsys-finetune", "Master"), 23456),
]
OUTSIDE = {
    "prometheus": ("monitoring", {"app.kubernetes.io/name": "prometheus"}),
    "client": ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}),
    "kfp-component": ("kubeflow", {"pipelines.kubeflow.org/v2_component": "true"}),
    "kube-dns": ("kube-system", {"k8s-app": "kube-dns"}),
}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_platform_flows(overlay):
    objs = rendered(overlay)
    if overlay.endswith("local"):  # no Worker replica in the local overlay
        flows = [f for f in FLOWS_ALLOWED + FLOWS_DENIED if "Worker" not in f[2]]
    else:
        flows = FLOWS_ALLOWED + FLOWS_DENIED
    for name, src, dst, port in flows:
        want = (name, src, dst, port) in FLOWS_ALLOWED
        assert P.flow_allowed(objs, pod(objs, *src), pod(objs, *dst), port) is want, name
    api, triton, redis = (
        pod(objs, "Deployment", "recsys-api"),
        pod(objs, "Deployment", "triton"),
        pod(objs, "StatefulSet", "redis"),
    )
    assert P.flow_allowed(objs, OUTSIDE["prometheus"], triton, 8002)
    assert P.flow_allowed(objs, OUTSIDE["prometheus"], api, 3000)
    assert not P.flow_allowed(objs, OUTSIDE["prometheus"], redis, 6379)
    assert P.flow_allowed(objs, OUTSIDE["client"], api, 3000)
    assert not P.flow_allowed(objs, OUTSIDE["client"], triton, 8001)
    assert not P.flow_allowed(objs, OUTSIDE["client"], redis, 6379)
    assert not P.flow_allowed(objs, OUTSIDE["client"], pod(objs, "StatefulSet", "postgres"), 5432)
    assert P.flow_allowed(objs, OUTSIDE["kfp-component"], pod(objs, "StatefulSet", "postgres"), 5432)
    assert P.flow_allowed(objs, OUTSIDE["kfp-component"], triton, 8000)
    assert P.flow_allowed(objs, OUTSIDE["kfp-component"], redis, 6379)
    kfp_here = (NAMESPACE, OUTSIDE["kfp-component"][1])  # pipelines run in this namespace (multi-user Kubeflow)
    assert P.flow_allowed(objs, kfp_here, triton, 8000) and P.flow_allowed(objs, kfp_here, redis, 6379)
    assert not P.flow_allowed(objs, kfp_here, api, 3000)
    for src in (api, triton, redis):
        assert P.flow_allowed(objs, src, OUTSIDE["kube-dns"], 53, "UDP")
    assert not P.flow_allowed(objs, api, OUTSIDE["client"], 443)  # no egress to the outside


def test_flow_check_sees_a_missing_allow_rule():
    objs = good_objects()
    client = ("other", {"app": "client"})
    web = ("ns", objs[0]["spec"]["template"]["metadata"]["labels"])
    assert P.flow_allowed(objs, client, web, 8080)
    assert not P.flow_allowed(objs, client, web, 9090)
    objs[4]["spec"]["ingress"][0]["from"] = [{"podSelector": {"matchLabels": {"app": "client"}}}]
    assert not P.flow_allowed(objs, client, web, 8080)  # the peer must be in the policy's namespace
    inside = ("ns", {"app": "client"})
    assert not P.flow_allowed(objs, inside, web, 8080)  # the default deny also blocks the client's egress
    objs.append(
        {
            "kind": "NetworkPolicy",
            "metadata": {"name": "client", "namespace": "ns"},
            "spec": {"podSelector": {"matchLabels": {"app": "client"}}, "egress": [{"ports": [{"port": 8080}]}]},
        }
    )
    assert P.flow_allowed(objs, inside, web, 8080)
    assert not P.flow_allowed(objs, web, ("ns", {"app": "client"}), 80)  # default deny: no egress


@needs_kubectl
def test_feast_production_store_matches_the_repository():
    """Same project as feature_repo/, Redis at the in-cluster address, registry on the pod's registry volume.
    (tests/k8s/test_feast_deployment.py runs this file with `feast apply` and `feast serve`.)"""
    objs = rendered("overlays/local")
    production = yaml.safe_load(_configmap_file(objs, "feast-config", "feature_store.yaml"))
    embedded = yaml.safe_load((P.K8S_DIR.parent / "feature_repo" / "feature_store.yaml").read_text(encoding="utf-8"))
    assert production["project"] == embedded["project"]
    assert production["entity_key_serialization_version"] == embedded["entity_key_serialization_version"]
    assert production["online_store"]["type"] == "redis"
    config = load_config(overrides=[f"features.{k}={v}" for k, v in yaml.safe_load(
        _configmap_file(objs, "recsys-config", "config.yaml"))["features"].items() if k.startswith("redis_")])
    # the same address; the password is the environment reference Feast substitutes, never a value
    address, password = production["online_store"]["connection_string"].rsplit(",password=", 1)
    assert address == config.features.redis_connection
    assert password == f'"${{{config.features.redis_password_env}}}"'
    feast = by_kind(objs, "Deployment")["feast"]
    registry_dir = Path(production["registry"]["path"]).parent
    for c in P.containers(feast["spec"]["template"]["spec"]):
        assert any(Path(m["mountPath"]) == registry_dir for m in c["volumeMounts"]), c["name"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert any(Path(m["mountPath"]) / "feature_store.yaml" == Path(env["FEAST_FS_YAML_FILE_PATH"])
                   for m in c["volumeMounts"])  # fmt: skip


# ------------------------------------------------------------------------- each check rejects a bad manifest
def good_objects() -> list[dict]:
    """A small compliant app: Deployment + Service + PDB + NetworkPolicies + ConfigMap + ServiceAccount."""
    labels = {"app.kubernetes.io/name": "web", P.PART_OF: "t"}
    meta = {"namespace": "ns", "labels": labels}
    restricted = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", **meta},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "web"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": "web",
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "web",
                            "image": "example.org/web:1.2.3",
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                            "livenessProbe": {"httpGet": {"path": "/live", "port": "http"}},
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "64Mi"},
                                "limits": {"cpu": "1", "memory": "128Mi"},
                            },
                            "securityContext": dict(restricted),
                            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/web"}],
                        }
                    ],
                    "volumes": [{"name": "cfg", "configMap": {"name": "web-config"}}],
                },
            },
        },
    }
    return [
        deployment,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", **meta},
            "spec": {"selector": {"app.kubernetes.io/name": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", **meta},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "web"}}},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "deny", **meta},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "web", **meta},
            "spec": {
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "web"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"ports": [{"port": 8080}]}],
            },
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config", **meta}, "data": {"a": "b"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", **meta}},
    ]


def _web(objs):
    return objs[0]["spec"]["template"]["spec"]


def _c(objs):
    return _web(objs)["containers"][0]


BREAKS = {
    "no limits": (lambda o: _c(o)["resources"].pop("limits"), "has no limits for cpu, memory"),
    "no memory request": (lambda o: _c(o)["resources"]["requests"].pop("memory"), "no requests for memory"),
    "root allowed": (lambda o: _web(o)["securityContext"].pop("runAsNonRoot"), "may run as root"),
    "uid 0": (lambda o: _c(o)["securityContext"].update(runAsUser=0), "runs as UID 0"),
    "writable root fs": (
        lambda o: _c(o)["securityContext"].update(readOnlyRootFilesystem=False),
        "writable root filesystem",
    ),
    "privilege escalation": (
        lambda o: _c(o)["securityContext"].pop("allowPrivilegeEscalation"),
        "allows privilege escalation",
    ),
    "capabilities kept": (
        lambda o: _c(o)["securityContext"].update(capabilities={"drop": ["NET_RAW"]}),
        "does not drop ALL",
    ),
    "capability added": (
        lambda o: _c(o)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
        "adds capabilities",
    ),
    "no seccomp": (lambda o: _web(o)["securityContext"].pop("seccompProfile"), "seccompProfile None"),
    "unconfined seccomp": (
        lambda o: _c(o)["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "seccompProfile 'Unconfined'",
    ),
    "host network": (lambda o: _web(o).update(hostNetwork=True), "host namespaces"),
    "init container unrestricted": (
        lambda o: _web(o).update(initContainers=[{**copy.deepcopy(_c(o)), "name": "init", "securityContext": {}}]),
        "container init allows privilege escalation",
    ),
    "no readiness": (lambda o: _c(o).pop("readinessProbe"), "has no readinessProbe"),
    "no liveness": (lambda o: _c(o).pop("livenessProbe"), "has no livenessProbe"),
    "probe on undeclared port": (
        lambda o: _c(o)["livenessProbe"]["httpGet"].update(port="admin"),
        "port 'admin' is not declared",
    ),
    "latest tag": (lambda o: _c(o).update(image="example.org/web:latest"), "floating :latest"),
    "untagged": (lambda o: _c(o).update(image="example.org/web"), "has no tag"),
    "no part-of label": (lambda o: o[0]["metadata"]["labels"].pop(P.PART_OF), "has no app.kubernetes.io/part-of"),
    "no pdb": (lambda o: o.pop(2), "has no PodDisruptionBudget"),
    "pdb selects other pods": (
        lambda o: o[2]["spec"].update(selector={"matchLabels": {"app.kubernetes.io/name": "x"}}),
        "has no PodDisruptionBudget",
    ),
    "no default deny": (lambda o: o.pop(3), "no default-deny NetworkPolicy"),
    "default deny allows all": (lambda o: o[3]["spec"].update(ingress=[{}]), "no default-deny NetworkPolicy"),
    "no own network policy": (lambda o: o.pop(4), "selected by no NetworkPolicy"),
    "missing configmap": (lambda o: o.pop(5), "ConfigMap 'web-config' does not exist"),
    "missing service account": (lambda o: o.pop(6), "ServiceAccount 'web' does not exist"),
    "mount without volume": (lambda o: _web(o).update(volumes=[]), "volumeMount 'cfg' has no volume"),
    "service selects nothing": (
        lambda o: o[1]["spec"].update(selector={"app.kubernetes.io/name": "nope"}),
        "selects no pods",
    ),
    "service port not declared": (
        lambda o: o[1]["spec"]["ports"][0].update(targetPort="grpc"),
        "targetPort 'grpc' is not a container port",
    ),
    "secret value in a configmap": (
        lambda o: o.append(_secret("web-db", password="a-long-db-password"))
        or o[5]["data"].update(url="host=db user=web a-long-db-password"),
        "url holds the value of Secret web-db (password)",
    ),
    "password in a configmap": (
        lambda o: o[5]["data"].update(conf="redis:6379,ssl=true,password=hunter2"),
        "conf holds a literal secret (password=...)",
    ),
    "password in a url": (
        lambda o: o[5]["data"].update(db="postgresql://web:hunter2@db:5432/web"),
        "db holds a URL with a password",
    ),
    "secret env as a literal": (
        lambda o: _c(o).update(env=[{"name": "DB_PASSWORD", "value": "hunter2"}]),
        "sets DB_PASSWORD to a literal value",
    ),
    "missing secret": (
        lambda o: _c(o).update(env=[{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "nope",
                                                                                          "key": "password"}}}]),
        "reads key 'password' of Secret 'nope', which does not exist",
    ),
}


def _secret(name: str, **values: str) -> dict:
    data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "ns",
                                                               "labels": {P.PART_OF: "t"}}, "data": data}


def test_environment_references_in_a_configmap_are_no_secret():
    objs = good_objects() + [_secret("web-db", password="a-long-db-password")]
    objs[5]["data"].update(conf='redis:6379,password="${DB_PASSWORD}"', args="--requirepass $(DB_PASSWORD)")
    _c(objs).update(env=[{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "web-db", "key": "password"}}},
                         {"name": "OPTIONAL_TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "t",
                                                                                   "optional": True}}}])
    assert P.all_problems(objs) == []


def test_the_compliant_example_passes_every_check():
    objs = good_objects()
    assert P.all_problems(objs) == []
    assert [p for obj in objs for p in P.validate_object(obj)] == []


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_each_check_rejects_a_bad_manifest(name):
    objs = good_objects()
    breaker, expected = BREAKS[name]
    breaker(objs)
    problems = P.all_problems(objs)
    assert any(expected in p for p in problems), f"{name}: {problems}"


@pytest.mark.parametrize(
    "image, ok",
    [
        ("redis:7.4.1-alpine", True),
        ("nvcr.io/nvidia/tritonserver:24.10-py3", True),
        ("localhost:5000/team/app:1.0", True),
        ("ghcr.io/a/b@sha256:" + "a" * 64, True),
        ("redis", False),
        ("redis:latest", False),
        ("localhost:5000/team/app", False),
        ("", False),
    ],
)
def test_image_pinning_rule(image, ok):
    assert (P.image_problem(image) is None) is ok, P.image_problem(image)


def test_strict_schema_validation_rejects_typos_and_bad_types():
    objs = good_objects()
    _c(objs)["resoures"] = _c(objs).pop("resources")
    assert any("resoures" in p for p in P.validate_object(objs[0]))
    objs = good_objects()
    objs[0]["spec"]["replicas"] = "two"
    assert any("replicas" in p or "'two'" in p for p in P.validate_object(objs[0]))


def selector_cases():
    labels = {"a": "1", "b": "2"}
    return [
        ({"matchLabels": {"a": "1"}}, labels, True),
        ({"matchLabels": {"a": "2"}}, labels, False),
        ({}, labels, True),
        (None, labels, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "3"]}]}, labels, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, labels, False),
        ({"matchExpressions": [{"key": "c", "operator": "Exists"}]}, labels, False),
        ({"matchExpressions": [{"key": "c", "operator": "DoesNotExist"}]}, labels, True),
    ]


@pytest.mark.parametrize("selector, labels, want", selector_cases())
def test_label_selector_semantics(selector, labels, want):
    assert P.selector_matches(selector, labels) is want


# ------------------------------------------------------------------------------------- the PyTorchJob schema
@pytest.fixture
def pytorchjob() -> dict:
    template = {
        "metadata": {"labels": {"app": "t"}},
        "spec": {
            "containers": [{"name": "pytorch", "image": "example.org/train:1", "command": ["torchrun", "-m", "train"]}]
        },
    }
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "t", "namespace": "ns"},
        "spec": {
            "nprocPerNode": "1",
            "runPolicy": {"suspend": True, "cleanPodPolicy": "None"},
            "pytorchReplicaSpecs": {
                "Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": copy.deepcopy(template)},
                "Worker": {"replicas": 2, "restartPolicy": "OnFailure", "template": copy.deepcopy(template)},
            },
        },
    }


def test_vendored_pytorchjob_schema_accepts_a_valid_job(pytorchjob):
    assert P.validate_object(pytorchjob) == []
    assert P.check_pytorchjob_operator_rules(pytorchjob) == []


@pytest.mark.parametrize(
    "breaker, expected",
    [
        (lambda j: j["spec"]["runPolicy"].update(suspnd=True), "'suspnd' was unexpected"),
        (lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].update(replicas="two"), "'two' is not of type 'integer'"),
        (lambda j: j["spec"].pop("pytorchReplicaSpecs"), "'pytorchReplicaSpecs' is a required property"),
        (lambda j: j["spec"].update(nprocPerNode=2), "2 is not of type 'string'"),
        (lambda j: j.update(apiVersion="kubeflow.org/v2"), "'kubeflow.org/v1' was expected"),
        (
            lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0].update(
                resoures={}
            ),
            "pod template: Additional properties are not allowed ('resoures' was unexpected)",
        ),
    ],
)
def test_vendored_pytorchjob_schema_rejects_bad_jobs(pytorchjob, breaker, expected):
    breaker(pytorchjob)
    problems = P.validate_object(pytorchjob)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "breaker, expected",
    [
        (
            lambda j: j["spec"]["pytorchReplicaSpecs"].update(Chief=j["spec"]["pytorchReplicaSpecs"]["Worker"]),
            "replica type 'Chief'",
        ),
        (
            lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(
                name="trainer"
            ),
            "no container named 'pytorch'",
        ),
        (lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"].update(replicas=2), "exactly 1 replica"),
    ],
)
def test_operator_rules_reject_bad_jobs(pytorchjob, breaker, expected):
    breaker(pytorchjob)
    assert any(expected in p for p in P.check_pytorchjob_operator_rules(pytorchjob))


@needs_kubectl
def test_kustomize_failure_is_reported(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n", encoding="utf-8")
    with pytest.raises(P.RenderError, match="missing.yaml"):
        P.render(tmp_path)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_keys_come_from_a_secret_mounted_as_a_directory(overlay, tmp_path):
    """serving.auth.api_keys_file is in the Secret recsys-api-keys, mounted without subPath (so a changed Secret
    reaches the running pods); the placeholder holds no key, and no file holds a token, only hashes."""
    import base64
    import json

    objs = rendered(overlay)
    path = tmp_path / "config.yaml"
    path.write_text(_configmap_file(objs, "recsys-config", "config.yaml"), encoding="utf-8")
    keys_file = Path(load_config(path).serving.auth.api_keys_file)
    deployment = by_kind(objs, "Deployment")["recsys-api"]
    mounts = {m["mountPath"]: m for m in container(deployment, "api")["volumeMounts"]}
    mount = mounts[str(keys_file.parent)]
    assert mount.get("readOnly") and "subPath" not in mount
    volume = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}[mount["name"]]
    assert volume["secret"]["secretName"] == "recsys-api-keys"
    secret = by_kind(objs, "Secret")["recsys-api-keys"]
    keys = json.loads(base64.b64decode(secret["data"][keys_file.name]))
    assert keys["keys"] == []  # a placeholder: no caller is let in until keys are added


# ------------------------------------------------------------------------------------------ the Spark overlay
@needs_kubectl
def test_spark_application_runs_the_features_step_on_spark(tmp_path):
    """The SparkApplication validates against its CRD schema, runs this project's features step file with
    features.engine=spark (its --set arguments give a valid config), and its driver and executors may talk to each
    other and the driver to Redis."""
    objs = rendered("overlays/spark")
    app = by_kind(objs, "SparkApplication")["recsys-features"]
    assert P.validate_object(app) == [] and app["spec"]["suspend"] is True
    main = app["spec"]["mainApplicationFile"]
    assert main.startswith("local:///app/") and (P.K8S_DIR.parent / main.removeprefix("local:///app/")).is_file()
    path = tmp_path / "config.yaml"
    path.write_text(_configmap_file(objs, "recsys-config", "config.yaml"), encoding="utf-8")
    overrides = [a.removeprefix("--set=") for a in app["spec"]["arguments"] if a.startswith("--set=")]
    config = load_config(path, overrides)
    assert config.features.engine == "spark" and config.features.spark_master.startswith("k8s://")
    driver, executor = (pod(objs, "SparkApplication", "recsys-features", role) for role in P.SPARK_ROLES)
    for src, dst in ((driver, executor), (executor, driver)):
        assert P.flow_allowed(objs, src, dst, 7078) and P.flow_allowed(objs, src, dst, 7079)
    assert P.flow_allowed(objs, driver, pod(objs, "StatefulSet", "redis"), 6379)
    assert not P.flow_allowed(objs, driver, pod(objs, "Deployment", "recsys-api"), 3000)
    assert by_kind(rendered("overlays/local"), "SparkApplication") == {}  # only the spark overlay has one


@needs_kubectl
def test_spark_application_checks_reject_a_broken_copy():
    """Schema, resources and security checks see the SparkApplication's driver and executor pods."""
    app = by_kind(rendered("overlays/spark"), "SparkApplication")["recsys-features"]
    unknown = copy.deepcopy(app)
    unknown["spec"]["driver"]["coreLimitt"] = "2"
    assert any("coreLimitt" in p for p in P.validate_object(unknown))
    bad_type = copy.deepcopy(app)
    bad_type["spec"]["executor"]["volumeMounts"][0]["readOnly"] = "yes"
    assert P.validate_object(bad_type) != []
    no_limit = copy.deepcopy(app)
    del no_limit["spec"]["executor"]["coreLimit"]
    assert P.check_resources(no_limit) == [
        "SparkApplication/recsys-features[executor]: container spark-kubernetes-executor has no limits for cpu"]
    writable = copy.deepcopy(app)
    writable["spec"]["driver"]["securityContext"]["readOnlyRootFilesystem"] = False
    assert P.check_security(writable) == [
        "SparkApplication/recsys-features[driver]: container spark-kubernetes-driver has a writable root filesystem"]
    floating = copy.deepcopy(app)
    floating["spec"]["image"] = "ghcr.io/recsys-kubeflow/components-spark:latest"
    assert len(P.check_images(floating)) == 2  # driver and executors
