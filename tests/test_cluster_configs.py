"""Every deployment file in cluster/ parses and validates against the schema of the tool that consumes it.

* KubeRay manifests (RayCluster, RayJob, RayService): the CRDs' structure as JSON Schema (field names,
  types, enums and required fields of KubeRay's ray.io/v1 API, unknown fields rejected), with every
  embedded pod template / Service validated as the core Kubernetes type by the strict OpenAPI schemas
  shipped in the ``kubernetes-validate`` package. Core objects (ConfigMap, PVC) are validated by
  ``kubernetes_validate`` itself.
* The RayService's serveConfigV2 and cluster/serve_rm.yaml: Ray Serve's own ``ServeDeploySchema``
  (plus a check for keys Serve would silently ignore), and ray_rm's ``ServeConfig`` for the app args.
* The RayJob's training config and entrypoint: ray_rm's ``TrainJobConfig`` loader and driver checks.
* cluster/runtime_env.yaml: Ray's ``RuntimeEnv``.
* The cluster launcher YAML: Ray's ``ray/autoscaler/ray-schema.json`` and the launcher's own
  ``prepare_config`` / ``validate_config``.
* The Dockerfile (docker cannot build here): parsed, every instruction known, base images pinned,
  stages and copied paths consistent, ``.[gpu]`` installed; cross-checked with BuildKit's parser
  (PyPI ``dockerfile``) when it is installed.

Each schema is also shown to reject broken variants, so a vacuous validator cannot pass.
"""
from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import REPO

CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER = CLUSTER / "launcher" / "aws-gpu.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
K8S_VERSION = "1.30"  # oldest Kubernetes the manifests target (KubeRay 1.5 supports >= 1.25)
SHARED_MOUNT = "/mnt/shared"

# Every YAML file under cluster/ and what validates it (a new file must be added here).
VALIDATED_YAML = {
    "runtime_env.yaml": "test_runtime_env_yaml",
    "serve_rm.yaml": "test_serve_configs",
    "kuberay/shared-storage.yaml": "test_kubernetes_manifests_validate",
    "kuberay/raycluster.yaml": "test_kubernetes_manifests_validate",
    "kuberay/rayjob-train.yaml": "test_kubernetes_manifests_validate",
    "kuberay/rayservice.yaml": "test_kubernetes_manifests_validate",
    "launcher/aws-gpu.yaml": "test_launcher_config_validates_against_ray_schema",
}


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kuberay_docs() -> list[tuple[str, dict]]:
    return [(f"{p.name}#{i}", d) for p in sorted(KUBERAY.glob("*.yaml")) for i, d in enumerate(load_docs(p))]


def one(kind: str) -> dict:
    (doc,) = [d for _, d in kuberay_docs() if d["kind"] == kind]
    return doc


# ----------------------------------------------------------------------------------------------------
# KubeRay CRD schemas (ray.io/v1, KubeRay 1.5), written from the operator's Go API types
# (ray-operator/apis/ray/v1/*_types.go). Pod templates, Services, resources etc. are the core types.
# ----------------------------------------------------------------------------------------------------
K8S_DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s."


def k8s(name: str) -> dict:
    return {"$ref": K8S_DEFS + name}


def obj(properties: dict, required: tuple = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


STR = {"type": "string"}
BOOL = {"type": "boolean"}
INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}  # Go map[string]string
POD_TEMPLATE = k8s("api.core.v1.PodTemplateSpec")
DNS_LABEL = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}

AUTH_OPTIONS = obj({"mode": {"enum": ["disabled", "token"]}, "secretName": STR, "enableK8sTokenAuth": BOOL})
AUTOSCALER_OPTIONS = obj({
    "resources": k8s("api.core.v1.ResourceRequirements"), "image": STR,
    "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "securityContext": k8s("api.core.v1.SecurityContext"), "idleTimeoutSeconds": INT32,
    "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]}, "version": {"enum": ["v1", "v2"]},
    "env": {"type": "array", "items": k8s("api.core.v1.EnvVar")},
    "envFrom": {"type": "array", "items": k8s("api.core.v1.EnvFromSource")},
    "volumeMounts": {"type": "array", "items": k8s("api.core.v1.VolumeMount")},
})
HEAD_GROUP = obj({
    "template": POD_TEMPLATE, "headService": k8s("api.core.v1.Service"), "enableIngress": BOOL,
    "rayStartParams": STR_MAP, "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
}, required=("template",))
WORKER_GROUP = obj({
    "suspend": BOOL, "groupName": DNS_LABEL, "replicas": INT32, "minReplicas": INT32, "maxReplicas": INT32,
    "idleTimeoutSeconds": INT32, "rayStartParams": STR_MAP, "template": POD_TEMPLATE,
    "scaleStrategy": obj({"workersToDelete": {"type": "array", "items": STR}}),
    "numOfHosts": {**INT32, "minimum": 1},
}, required=("groupName", "template"))
RAY_CLUSTER_SPEC = obj({
    "upgradeStrategy": obj({"type": {"enum": ["Recreate", "None"]}}), "authOptions": AUTH_OPTIONS,
    "suspend": BOOL, "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
    "autoscalerOptions": AUTOSCALER_OPTIONS, "headServiceAnnotations": STR_MAP, "enableInTreeAutoscaling": BOOL,
    "gcsFaultToleranceOptions": {"type": "object"}, "headGroupSpec": HEAD_GROUP, "rayVersion": STR,
    "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
}, required=("headGroupSpec",))
RAY_JOB_SPEC = obj({
    "activeDeadlineSeconds": {**INT32, "minimum": 1}, "backoffLimit": INT32, "rayClusterSpec": RAY_CLUSTER_SPEC,
    "submitterPodTemplate": POD_TEMPLATE, "metadata": STR_MAP, "clusterSelector": STR_MAP,
    "submitterConfig": obj({"backoffLimit": INT32}), "managedBy": STR,
    "deletionPolicy": {"enum": ["DeleteCluster", "DeleteWorkers", "DeleteSelf", "DeleteNone"]},
    "entrypoint": {"type": "string", "minLength": 1}, "runtimeEnvYAML": STR, "jobId": STR,
    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
    "entrypointResources": STR, "entrypointNumCpus": {"type": "number"}, "entrypointNumGpus": {"type": "number"},
    "ttlSecondsAfterFinished": INT32, "shutdownAfterJobFinishes": BOOL, "suspend": BOOL,
}, required=("entrypoint", "rayClusterSpec"))  # both optional in the CRD; a job that trains needs both
RAY_SERVICE_SPEC = obj({
    "serveConfigV2": {"type": "string", "minLength": 1}, "rayClusterConfig": RAY_CLUSTER_SPEC,
    "serveService": k8s("api.core.v1.Service"), "excludeHeadPodFromServeSvc": BOOL,
    "upgradeStrategy": obj({"type": {"enum": ["NewCluster", "NewClusterWithIncrementalUpgrade", "None"]},
                            "clusterUpgradeOptions": {"type": "object"}}),
    "rayClusterDeletionDelaySeconds": INT32,
    "serviceUnhealthySecondThreshold": INT32, "deploymentUnhealthySecondThreshold": INT32,
}, required=("serveConfigV2", "rayClusterConfig"))


def custom_resource(kind: str, spec: dict) -> dict:
    metadata = {"allOf": [k8s("apimachinery.pkg.apis.meta.v1.ObjectMeta"),
                          {"required": ["name"], "properties": {"name": DNS_LABEL}}]}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **obj({"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": kind}, "metadata": metadata,
                   "spec": spec}, required=("apiVersion", "kind", "metadata", "spec"))}


CRD_SCHEMAS = {"RayCluster": custom_resource("RayCluster", RAY_CLUSTER_SPEC),
               "RayJob": custom_resource("RayJob", RAY_JOB_SPEC),
               "RayService": custom_resource("RayService", RAY_SERVICE_SPEC)}


@lru_cache(maxsize=1)
def k8s_registry():
    """The strict core-type definitions of kubernetes-validate (additionalProperties: false everywhere)."""
    import kubernetes_validate
    from referencing import Registry, Resource

    defs_path = (Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
                 / f"v{K8S_VERSION}.0-local-strict" / "_definitions.json")
    return Resource.from_contents(json.loads(defs_path.read_text())) @ Registry()


def schema_errors(doc: dict) -> list[str]:
    """All validation errors of one manifest document, as 'path: message' lines."""
    if str(doc.get("apiVersion", "")).startswith("ray.io/"):
        schema = CRD_SCHEMAS.get(doc.get("kind"))
        if schema is None:
            return [f"unknown KubeRay kind {doc.get('kind')!r}"]
        validator = jsonschema.Draft202012Validator(schema, registry=k8s_registry())
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.absolute_path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    return []


def cluster_specs() -> list[tuple[str, dict]]:
    """Every RayCluster spec in the manifests: the RayCluster's, the RayJob's and the RayService's."""
    return [("RayCluster", one("RayCluster")["spec"]), ("RayJob", one("RayJob")["spec"]["rayClusterSpec"]),
            ("RayService", one("RayService")["spec"]["rayClusterConfig"])]


def pod_templates(spec: dict) -> list[tuple[str, dict]]:
    return [("head", spec["headGroupSpec"]["template"])] + [
        (g["groupName"], g["template"]) for g in spec.get("workerGroupSpecs", [])]


def ray_container(template: dict) -> dict:
    return template["spec"]["containers"][0]  # KubeRay runs `ray start` in the first container


def gpus(template: dict) -> int:
    return int(ray_container(template)["resources"].get("limits", {}).get("nvidia.com/gpu", 0))


def cpus(template: dict) -> float:
    raw = str(ray_container(template)["resources"]["limits"]["cpu"])
    return float(raw[:-1]) / 1000 if raw.endswith("m") else float(raw)


def test_every_cluster_yaml_is_validated():
    found = {str(p.relative_to(CLUSTER)) for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml")}
    assert found == set(VALIDATED_YAML), f"unvalidated or missing YAML under cluster/: {found ^ set(VALIDATED_YAML)}"
    for name in VALIDATED_YAML.values():
        assert callable(globals()[name])
    assert DOCKERFILE.is_file() and LAUNCHER.is_file()


@pytest.mark.parametrize("name,doc", kuberay_docs(), ids=[n for n, _ in kuberay_docs()])
def test_kubernetes_manifests_validate(name, doc):
    assert schema_errors(doc) == []


def _break(path: str, value=None, delete: bool = False):
    def mutate(doc):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
        node = doc
        for key in parents:
            node = node[key]
        if delete:
            del node[last]
        else:
            node[last] = value
    return mutate


HEAD = "spec/headGroupSpec"
BROKEN = {
    "no headGroupSpec": ("RayCluster", _break(HEAD, delete=True), "'headGroupSpec' is a required property"),
    "non-string rayStartParams": ("RayCluster", _break(f"{HEAD}/rayStartParams/num-cpus", 0),
                                  "is not of type 'string'"),
    "typo in a container": ("RayCluster", _break(f"{HEAD}/template/spec/containers/0/imagee", "x"),
                            "Additional properties are not allowed"),
    "container without name": ("RayCluster", _break(f"{HEAD}/template/spec/containers/0/name", delete=True),
                               "'name' is a required property"),
    "pod without containers": ("RayCluster", _break(f"{HEAD}/template/spec/containers", delete=True),
                               "'containers' is a required property"),
    "worker group without name": ("RayCluster", _break("spec/workerGroupSpecs/0/groupName", delete=True),
                                  "'groupName' is a required property"),
    "bad auth mode": ("RayCluster", _break("spec/authOptions/mode", "password"), "is not one of"),
    "unknown spec field": ("RayCluster", _break("spec/workerGroups", []), "Additional properties are not allowed"),
    "wrong apiVersion": ("RayCluster", _break("apiVersion", "ray.io/v1alpha1"), "was expected"),
    "job without entrypoint": ("RayJob", _break("spec/entrypoint", delete=True), "'entrypoint' is a required"),
    "bad submission mode": ("RayJob", _break("spec/submissionMode", "Batch"), "is not one of"),
    "serve config as a mapping": ("RayService", _break("spec/serveConfigV2", {"applications": []}),
                                  "is not of type 'string'"),
    "typo in serveService": ("RayService", _break("spec/serveService/spec/prots", []),
                             "Additional properties are not allowed"),
    "bad volume in a worker": ("RayService", _break("spec/rayClusterConfig/workerGroupSpecs/0/template/spec/"
                                                    "volumes/0/persistentVolumeClaim", {"name": "x"}),
                               "'claimName' is a required property"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_schemas_reject_broken_manifests(case):
    kind, mutate, message = BROKEN[case]
    doc = copy.deepcopy(one(kind))
    mutate(doc)
    errors = schema_errors(doc)
    assert any(message in e for e in errors), errors


def test_core_objects_are_validated_strictly():
    pvc = copy.deepcopy(load_docs(KUBERAY / "shared-storage.yaml")[0])
    pvc["spec"]["accesModes"] = ["ReadWriteMany"]
    assert schema_errors(pvc)
    config_map = copy.deepcopy(next(d for _, d in kuberay_docs() if d["kind"] == "ConfigMap"))
    config_map["data"]["train.yaml"] = {"not": "a string"}
    assert schema_errors(config_map)


QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")


@pytest.mark.parametrize("where,spec", cluster_specs(), ids=[w for w, _ in cluster_specs()])
def test_cluster_specs_are_secure_and_consistent(where, spec):
    import ray

    launcher = yaml.safe_load(LAUNCHER.read_text())
    shared_pvc = load_docs(KUBERAY / "shared-storage.yaml")[0]["metadata"]["name"]
    assert spec["rayVersion"] == ray.__version__  # the image's Ray (pyproject pins 2.60.x)
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no training / serving work on the head
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert any(gpus(t) > 0 for _, t in pod_templates(spec)), "no GPU worker group"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    for name, template in pod_templates(spec):
        pod, container = template["spec"], ray_container(template)
        assert container["image"] == launcher["docker"]["image"], name  # one image everywhere
        assert re.search(r":\d+\.\d+\.\d+-cu\d+$", container["image"]), "image tag must be pinned"
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        resources = container["resources"]
        assert resources["requests"] == resources["limits"], name  # guaranteed QoS: no eviction mid-run
        assert all(QUANTITY.match(str(v)) for v in resources["limits"].values()), resources
        if gpus(template):
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {shared_pvc}, name
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {SHARED_MOUNT, "/dev/shm"} <= mounts, name


def test_rayjob_entrypoint_runs_train_rm_with_a_valid_config(tmp_path):
    from ray.runtime_env import RuntimeEnv

    from ray_rm.config import load_config
    from ray_rm.config_schema import TrainJobConfig
    from ray_rm.validation import validate

    job = one("RayJob")["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["python", "/app/jobs/train_rm.py"]
    assert (REPO / "jobs" / "train_rm.py").is_file() and "COPY jobs ./jobs" in DOCKERFILE.read_text()
    assert argv[2] == "--config"
    config_path, overrides = Path(argv[3]), argv[4:]
    # The config file comes from a ConfigMap volume mounted on the head (where the driver runs).
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (mount,) = [m for m in ray_container({"spec": head})["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    (volume,) = [v for v in head["volumes"] if v["name"] == mount["name"]]
    (config_map,) = [d for _, d in kuberay_docs() if d["kind"] == "ConfigMap"
                     and d["metadata"]["name"] == volume["configMap"]["name"]]
    local = tmp_path / config_path.name
    local.write_text(config_map["data"][config_path.name])
    cfg = load_config(TrainJobConfig, str(local), overrides)  # unknown keys / wrong types raise
    validate(cfg)
    assert cfg.output_dir.startswith(SHARED_MOUNT) and cfg.train.storage_path.startswith(SHARED_MOUNT)
    assert all(f.startswith(SHARED_MOUNT) for f in cfg.data.train_files + cfg.data.eval_files)
    assert cfg.ray.address == "auto-local"  # joins the cluster the job runs on
    # The workers fit the job's GPU pods: one GPU and cpus_per_worker CPUs each.
    gpu_pods = [(g["replicas"], g["template"]) for g in job["rayClusterSpec"]["workerGroupSpecs"]
                if gpus(g["template"])]
    assert cfg.train.use_gpu
    assert cfg.train.num_workers <= sum(n * gpus(t) for n, t in gpu_pods)
    assert all(gpus(t) * cfg.train.cpus_per_worker <= cpus(t) for _, t in gpu_pods)
    # The job-level runtime env is cluster/runtime_env.yaml's, minus working_dir (the code is in the image).
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    RuntimeEnv(**runtime_env)
    assert runtime_env["env_vars"] == yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())["env_vars"]
    assert "working_dir" not in runtime_env


def test_rayjob_config_errors_are_caught(tmp_path):
    """The check above is not vacuous: a misspelled key in the ConfigMap fails it."""
    from ray_rm.config import ConfigError, load_config
    from ray_rm.config_schema import TrainJobConfig

    config_map = next(d for _, d in kuberay_docs() if d["kind"] == "ConfigMap")
    local = tmp_path / "train.yaml"
    local.write_text(config_map["data"]["train.yaml"].replace("num_workers:", "num_worker:"))
    with pytest.raises(ConfigError, match="num_worker"):
        load_config(TrainJobConfig, str(local), [])


def serve_schema_errors(config: dict) -> list[str]:
    """Ray Serve's ServeDeploySchema, plus the keys it would silently ignore (its models allow extras)."""
    from pydantic import ValidationError
    from ray.serve.schema import HTTPOptionsSchema, ServeApplicationSchema, ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        return [str(exc)]
    unknown = set(config) - set(ServeDeploySchema.model_fields)
    unknown |= {f"http_options.{k}" for k in set(config.get("http_options", {})) - set(HTTPOptionsSchema.model_fields)}
    for app in config.get("applications", []):
        unknown |= {f"applications.{k}" for k in set(app) - set(ServeApplicationSchema.model_fields)}
    return [f"unknown Serve config key {k}" for k in sorted(unknown)]


def test_serve_configs():
    """serve_rm.yaml and the RayService's serveConfigV2 are valid Serve configs of the same app."""
    from ray_rm.config import from_dict
    from ray_rm.serve.config import TOKEN_ENV, ServeConfig

    local = yaml.safe_load((CLUSTER / "serve_rm.yaml").read_text())
    service = one("RayService")["spec"]
    k8s_cfg = yaml.safe_load(service["serveConfigV2"])
    for config in (local, k8s_cfg):
        assert serve_schema_errors(config) == []
        for app in config["applications"]:
            assert app["import_path"] == "ray_rm.serve.app:app_builder"
            from_dict(ServeConfig, app["args"]["serve"], "serve.")  # ray_rm's own keys and types
    # Same application; only the checkpoint path differs (the shared volume in Kubernetes).
    def strip(apps):
        return [{**a, "args": {"serve": {k: v for k, v in a["args"]["serve"].items() if k != "model_path"}}}
                for a in apps]

    assert strip(k8s_cfg["applications"]) == strip(local["applications"])
    assert k8s_cfg["proxy_location"] == local["proxy_location"]
    assert k8s_cfg["http_options"]["port"] == local["http_options"]["port"]
    assert local["http_options"]["host"] == "127.0.0.1"  # single machine: loopback only
    (app,) = k8s_cfg["applications"]
    serve = app["args"]["serve"]
    assert serve["model_path"].startswith(SHARED_MOUNT + "/") and serve["model_path"].endswith("/hf")
    # In Kubernetes the proxy listens on the pod IP for the Service: then a bearer token is mandatory,
    # from a Secret, in every Ray container (replicas run there and read it from the environment).
    assert k8s_cfg["http_options"]["host"] == "0.0.0.0"
    spec = service["rayClusterConfig"]
    for name, template in pod_templates(spec):
        env = {e["name"]: e for e in ray_container(template).get("env", [])}
        assert "secretKeyRef" in env[TOKEN_ENV]["valueFrom"], name
        assert "value" not in env[TOKEN_ENV], "never a literal token in a manifest"
    svc = service["serveService"]["spec"]
    assert svc["type"] == "ClusterIP" and svc["ports"][0]["port"] == k8s_cfg["http_options"]["port"]
    # Replicas fit the GPU pods, and autoscaling can reach max_replicas.
    gpu_groups = [g for g in spec["workerGroupSpecs"] if gpus(g["template"])]
    per_pod = [min(gpus(g["template"]) // serve["num_gpus"], cpus(g["template"]) // serve["num_cpus"])
               for g in gpu_groups]
    assert min(per_pod) >= 1
    assert sum(n * g["maxReplicas"] for n, g in zip(per_pod, gpu_groups)) >= serve["max_replicas"]
    assert spec["enableInTreeAutoscaling"] is True


@pytest.mark.parametrize("mutate,match", [
    (lambda c: c["applications"][0].pop("import_path"), "import_path"),
    (lambda c: c["http_options"].update(hostt="0.0.0.0"), "http_options.hostt"),
    (lambda c: c.update(aplications=[]), "aplications"),
])
def test_serve_schema_rejects_broken_configs(mutate, match):
    config = yaml.safe_load(one("RayService")["spec"]["serveConfigV2"])
    mutate(config)
    assert any(match in e for e in serve_schema_errors(config))


def test_runtime_env_yaml():
    from ray.runtime_env import RuntimeEnv

    from ray_rm.ray_utils import _WORKER_ENV

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)  # Ray's own validation of every field
    assert env["working_dir"] == "."
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    # ray.init inside the job adds ray_rm's worker env; Ray refuses a driver whose ray.init runtime_env
    # sets an env var the job's runtime_env also sets.
    assert not set(env["env_vars"]) & set(_WORKER_ENV)
    with pytest.raises(TypeError):
        RuntimeEnv(**{**env, "env_vars": {"A": 1}})


def test_launcher_config_validates_against_ray_schema():
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(LAUNCHER.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)
    prepared = prepare_config(copy.deepcopy(raw))  # merged with the AWS defaults, as `ray up` does
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    # The AWS defaults would pip-install Ray on every node: the image has everything instead.
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert prepared[key] == [], key
    nodes = prepared["available_node_types"]
    head = nodes[prepared["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert any(n["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p4d.", "p5.")) for n in nodes.values())
    assert prepared["docker"]["image"] == ray_container(one("RayCluster")["spec"]["headGroupSpec"]["template"])["image"]
    # Token auth on every node; the dashboard / Jobs API only on the head's loopback (SSH tunnel).
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in prepared[key] if "ray start" in c]
        assert start and all("export RAY_AUTH_MODE=token;" in c for c in start), key
    (head_start,) = [c for c in prepared["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "~/.ray/auth_token" in prepared["file_mounts"]


@pytest.mark.parametrize("mutate", [
    lambda c: c["available_node_types"]["ray.worker.gpu"].update(resources={"GPU": "4"}),
    lambda c: c["docker"].update(imagee="x"),
    lambda c: c.pop("provider"),
    lambda c: c.update(max_workers="ten"),
])
def test_launcher_schema_rejects_broken_configs(mutate):
    import ray

    config = yaml.safe_load(LAUNCHER.read_text())
    mutate(config)
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)


# ----------------------------------------------------------------------------------------------------
# Dockerfile
# ----------------------------------------------------------------------------------------------------
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: comments dropped, backslash continuations joined."""
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continuation are ignored by Docker
        pending += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    assert not pending, "dangling line continuation at the end"
    return out


def dockerfile_problems(text: str, repo: Path = REPO) -> list[str]:
    problems = []
    instructions = parse_dockerfile(text)
    args = {}
    stages: list[str] = []
    for word, rest in instructions:
        if word not in INSTRUCTIONS:
            problems.append(f"unknown instruction {word}")
        if word == "ARG":
            name, _, default = rest.partition("=")
            args.setdefault(name, default)
        if word == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            if "$" in image:
                problems.append(f"FROM {parts[0]}: undefined ARG")
            elif image not in stages and not re.search(r":[\w.-]*\d[\w.-]*$|@sha256:[0-9a-f]{64}$", image):
                problems.append(f"FROM {image}: not pinned to a version")
            if ":latest" in image:
                problems.append(f"FROM {image}: latest is not a pin")
            stages.append(parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages)))
        if word in ("COPY", "ADD"):
            flags = [t for t in rest.split() if t.startswith("--")]
            paths = [t for t in rest.split() if not t.startswith("--")]
            source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            if source_stage is not None:
                if source_stage not in stages[:-1]:
                    problems.append(f"COPY --from={source_stage}: no such earlier stage")
            else:  # a wildcard may match nothing (BuildKit accepts it while another source matches)
                found = {src: (repo / src).exists() or any(fnmatch.fnmatch(p.name, src) for p in repo.iterdir())
                         for src in paths[:-1]}
                for src, ok in found.items():
                    if not ok and (not any(c in src for c in "*?[") or not any(found.values())):
                        problems.append(f"COPY {src}: not in the build context")
    if not instructions or instructions[0][0] not in ("ARG", "FROM"):
        problems.append("a Dockerfile must start with ARG or FROM")
    return problems


def test_dockerfile_parses_and_is_consistent():
    text = DOCKERFILE.read_text()
    assert dockerfile_problems(text) == []
    instructions = parse_dockerfile(text)
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert all(f.startswith("nvidia/cuda:${CUDA_VERSION}-cudnn-") for f in froms)  # CUDA base images
    arg_defaults = dict(rest.partition("=")[::2] for word, rest in instructions if word == "ARG" and "=" in rest)
    assert re.fullmatch(r"\d+\.\d+\.\d+", arg_defaults["CUDA_VERSION"])
    runs = [rest for word, rest in instructions if word == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if 'pip install "torch==' in r)
    flash_at = next(i for i, r in enumerate(runs) if "flash-attn" in r)
    gpu_at = next(i for i, r in enumerate(runs) if '".[gpu]"' in r)
    assert torch_at < flash_at <= gpu_at  # the optional flash-attn build compiles against the installed torch
    assert "--no-build-isolation" in runs[flash_at] and "--no-build-isolation" in runs[gpu_at]
    # flash-attn (hours of CUDA compile) is opt-in: the default build and the gpu extra never need it
    assert arg_defaults["INSTALL_FLASH_ATTN"] == "0"
    assert re.match(r'if \[ "\$\{INSTALL_FLASH_ATTN\}" = "1" \]; then', runs[flash_at])
    assert "varlen_attn" in runs[gpu_at]  # the image checks torch's own varlen kernel instead
    pyproject = (REPO / "pyproject.toml").read_text()
    gpu_extra = re.search(r'^gpu = \[(.*)\]', pyproject, re.MULTILINE).group(1)
    assert "flash-attn" not in gpu_extra and re.search(r'^flash = \[.*"flash-attn', pyproject, re.MULTILINE)
    # The final stage runs as a non-root user, with token auth as the default for any `ray start`.
    last_from = max(i for i, (w, _) in enumerate(instructions) if w == "FROM")
    final = instructions[last_from:]
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("ENV", next(r for w, r in final if w == "ENV" and "RAY_AUTH_MODE" in r)) in final
    assert "RAY_AUTH_MODE=token" in next(r for w, r in final if w == "ENV" and "RAY_AUTH_MODE" in r)
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignore)


def test_dockerfile_agrees_with_buildkit_parser():
    """BuildKit's own parser (PyPI `dockerfile`, the Go parser) sees the same instructions."""
    dockerfile = pytest.importorskip("dockerfile")
    ours = parse_dockerfile(DOCKERFILE.read_text())
    theirs = dockerfile.parse_file(str(DOCKERFILE))
    assert [w for w, _ in ours] == [c.cmd.upper() for c in theirs]


@pytest.mark.parametrize("text,problem", [
    ("FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04\nRUNN echo hi\n", "unknown instruction RUNN"),
    ("FROM nvidia/cuda\n", "not pinned"),
    ("FROM nvidia/cuda:latest\n", "latest is not a pin"),
    ("FROM ${BASE}\n", "undefined ARG"),
    ("FROM python:3.11-slim\nCOPY --from=builder /x /x\n", "no such earlier stage"),
    ("FROM python:3.11-slim\nCOPY no_such_dir ./x\n", "not in the build context"),
])
def test_dockerfile_checker_catches_mistakes(text, problem):
    assert any(problem in p for p in dockerfile_problems(text)), dockerfile_problems(text)
