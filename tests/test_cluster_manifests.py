"""The cluster files are data: check them against the schemas their consumers enforce.

* KubeRay objects (RayCluster, RayJob) against the operator's CRD v1 ``openAPIV3Schema``
  (../shared/schemas/kuberay), made as strict as the API server: unknown fields are rejected the
  way structural pruning would drop them, int-or-string and list-map rules apply.
* cluster/aws.yaml against Ray's own cluster-launcher schema (ray/autoscaler/ray-schema.json).
* Who gets in: ClusterIP only, credentials only through secretKeyRef, no literal secrets.
* cluster/runtime_env.yaml keeps the working_dir upload to source code.

    python -m pytest tests/test_cluster_manifests.py
"""
from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
IMAGE_CODE_DIR = "/home/ray/poster-ray/"  # where cluster/Dockerfile puts the repo in the image
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
# Kubernetes core objects the manifests may hold; anything else (Ingress, Secret, ...) is a review.
CORE_KINDS = {
    "PersistentVolumeClaim": "v1",
    "Deployment": "apps/v1",
    "Service": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}


# --------------------------------------------------------------------------- loading


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kuberay_docs() -> list[tuple[str, dict]]:
    out = [(f"{p.name}#{i}", d) for p in sorted(KUBERAY.glob("*.yaml")) for i, d in enumerate(load_docs(p))]
    assert out, f"no manifests under {KUBERAY}"
    return out


def ray_objects(kind: str) -> list[tuple[str, dict]]:
    return [(n, d) for n, d in kuberay_docs() if d.get("kind") == kind]


def cluster_specs() -> list[tuple[str, dict]]:
    """Every RayCluster spec: the RayCluster objects and the rayClusterSpec of each RayJob."""
    specs = [(n, d["spec"]) for n, d in ray_objects("RayCluster")]
    specs += [(n, d["spec"]["rayClusterSpec"]) for n, d in ray_objects("RayJob")]
    return specs


def pod_specs(spec: dict) -> Iterator[dict]:
    yield spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["template"]["spec"]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Yield (path, key, value) for every mapping entry and list item, depth first."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", k, v
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield f"{path}[{i}]", None, v
            yield from walk(v, f"{path}[{i}]")


# --------------------------------------------------------------------------- CRD schema → jsonschema


def strict_schema(node: Any) -> Any:
    """An OpenAPI v3 CRD schema as a jsonschema that rejects what the API server would not keep.

    Structural pruning drops fields a schema does not declare, unless the node says
    ``x-kubernetes-preserve-unknown-fields``. A manifest relying on such a field is wrong (a
    misspelled key silently does nothing), so those objects get ``additionalProperties: false``.
    """
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) for k, v in node.items()}
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _list_map_keys(validator, keys, instance, schema):
    """x-kubernetes-list-type: map — items are unique by their keys (defaults filled in)."""
    if schema.get("x-kubernetes-list-type") != "map" or not isinstance(instance, list):
        return
    props = schema.get("items", {}).get("properties", {})
    seen = set()
    for item in instance:
        if not isinstance(item, dict):
            continue
        ident = tuple(json.dumps(item.get(k, props.get(k, {}).get("default"))) for k in keys)
        if ident in seen:
            yield jsonschema.ValidationError(f"duplicate entry for list-map keys {keys}: {ident}")
        seen.add(ident)


def _list_set(validator, list_type, instance, schema):
    """x-kubernetes-list-type: set — no repeated items."""
    if list_type == "set" and isinstance(instance, list):
        dumped = [json.dumps(i, sort_keys=True) for i in instance]
        if len(dumped) != len(set(dumped)):
            yield jsonschema.ValidationError(f"repeated items in a list-type=set: {instance}")


FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("int32")
def _int32(value) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _int64(value) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


KubeValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator,
    {"x-kubernetes-list-map-keys": _list_map_keys, "x-kubernetes-list-type": _list_set},
)


@pytest.fixture(scope="module")
def crd_validators(shared_dir: Path) -> dict[str, jsonschema.protocols.Validator]:
    folder = shared_dir / "schemas" / "kuberay"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: no KubeRay CRDs to validate against")
    validators = {}
    for kind, fname in CRD_FILES.items():
        # libyaml when PyYAML has it: the two CRDs are 2.3 MB, 6 s in the pure-Python parser
        crd = yaml.load((folder / fname).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        assert crd["spec"]["names"]["kind"] == kind
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        validators[kind] = KubeValidator(strict_schema(v1["schema"]["openAPIV3Schema"]),
                                         format_checker=FORMATS)
    return validators


DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def crd_errors(validators: dict, doc: dict) -> list[str]:
    kind = doc.get("kind")
    if doc.get("apiVersion") != "ray.io/v1" or kind not in validators:
        return [f"not a ray.io/v1 RayCluster/RayJob: {doc.get('apiVersion')} {kind}"]
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validators[kind].iter_errors(doc)]
    name = doc.get("metadata", {}).get("name", "")
    if not (DNS1123.match(name) and len(name) <= 63):
        errors.append(f"metadata.name {name!r} is not a DNS-1123 label")
    return errors


# --------------------------------------------------------------------------- KubeRay


def test_kuberay_manifests_match_the_crds(crd_validators):
    checked = []
    for name, doc in kuberay_docs():
        if doc.get("apiVersion", "").startswith("ray.io/"):
            assert crd_errors(crd_validators, doc) == [], name
            checked.append(doc["kind"])
        else:
            kind = doc.get("kind")
            assert CORE_KINDS.get(kind) == doc.get("apiVersion"), f"{name}: unexpected {kind}"
            assert DNS1123.match(doc["metadata"]["name"]) and "spec" in doc, name
    assert sorted(checked) == ["RayCluster", "RayJob", "RayJob"]


def _set(doc: dict, path: str, value: Any) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return doc


def _rename(doc: dict, path: str, new_key: str) -> dict:
    *parents, last = path.split(".")
    value = doc
    for p in path.split("."):
        value = value[int(p)] if p.isdigit() else value[p]
    return _set(_set(doc, path, _DELETE), ".".join(parents + [new_key]), value)


_DELETE = object()
WORKER = "spec.workerGroupSpecs.0"
JOB_WORKER = "spec.rayClusterSpec.workerGroupSpecs.0"
JOB_CONTAINER = "spec.rayClusterSpec.headGroupSpec.template.spec.containers.0"

# case: (kind, how to break a good copy, a fragment of the error it must raise)
BROKEN = {
    "misspelled worker field": ("RayCluster", lambda d: _rename(d, f"{WORKER}.maxReplicas", "maxReplica"),
                                "'maxReplica' was unexpected"),
    "replicas as a string": ("RayCluster", lambda d: _set(d, f"{WORKER}.minReplicas", "0"),
                             "is not of type 'integer'"),
    "required groupName missing": ("RayCluster", lambda d: _set(d, f"{WORKER}.groupName", _DELETE),
                                   "'groupName' is a required property"),
    "misspelled RayJob field": ("RayJob", lambda d: _rename(d, "spec.shutdownAfterJobFinishes",
                                                            "shutdownAfterJobFinish"),
                                "'shutdownAfterJobFinish' was unexpected"),
    "bool as a string": ("RayJob", lambda d: _set(d, "spec.shutdownAfterJobFinishes", "true"),
                         "is not of type 'boolean'"),
    "int32 overflow": ("RayJob", lambda d: _set(d, "spec.ttlSecondsAfterFinished", 2**40), "is not a 'int32'"),
    "bad quantity": ("RayJob", lambda d: _set(d, f"{JOB_CONTAINER}.resources.limits.cpu", "eight"),
                     "does not match"),
    "unknown env key": ("RayJob", lambda d: _set(d, f"{JOB_CONTAINER}.env.0.valueFromm", {}),
                        "'valueFromm' was unexpected"),
    "duplicate container": ("RayJob", lambda d: _set(
        d, f"{JOB_CONTAINER[:-2]}", d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
        ["spec"]["containers"] * 2), "duplicate entry for list-map keys"),
    "bad auth mode": ("RayCluster", lambda d: _set(d, "spec.authOptions.mode", "password"), "is not one of"),
    "bad name": ("RayJob", lambda d: _set(d, "metadata.name", "Poster_Train"), "DNS-1123"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_manifest_copies_fail(crd_validators, case):
    kind, breaker, expected = BROKEN[case]
    (_, original), *_ = ray_objects(kind)
    assert crd_errors(crd_validators, original) == []
    errors = crd_errors(crd_validators, breaker(original))
    assert any(expected in e for e in errors), f"'{case}': expected '{expected}', got {errors}"


def test_int_or_string_quantities_accept_both_forms(crd_validators):
    (_, doc), = ray_objects("RayCluster")
    as_int = copy.deepcopy(doc)
    as_int["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"] = 1
    assert crd_errors(crd_validators, as_int) == []


def test_ray_version_matches_images_and_installed_ray():
    import ray

    for name, spec in cluster_specs():
        assert spec["rayVersion"] == ray.__version__, name
        for pod in pod_specs(spec):
            for c in pod["containers"]:
                assert f"ray{spec['rayVersion']}" in c["image"] or f":{spec['rayVersion']}" in c["image"], (
                    f"{name}: image {c['image']} does not carry rayVersion {spec['rayVersion']}")
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-" in dockerfile
    aws = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    assert aws["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")


def test_gpu_workers_autoscale_and_share_storage():
    for name, spec in cluster_specs():
        assert spec.get("enableInTreeAutoscaling") is True, name
        assert spec.get("authOptions", {}).get("mode") == "token", name
        gpu_groups = [g for g in spec["workerGroupSpecs"]
                      if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
        assert gpu_groups, f"{name}: no GPU worker group"
        for g in gpu_groups:
            assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], name
            assert g["maxReplicas"] >= 1
            head_limits = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert "nvidia.com/gpu" not in head_limits, f"{name}: the head should stay CPU-only"
        for pod in pod_specs(spec):
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                      for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts", [])}
            assert mounts.get("/mnt/cluster_storage") in claims, f"{name}: no shared PVC at /mnt/cluster_storage"
    pvcs = [d["metadata"]["name"] for _, d in kuberay_docs() if d.get("kind") == "PersistentVolumeClaim"]
    assert pvcs and all(d["spec"]["accessModes"] == ["ReadWriteMany"]
                        for _, d in kuberay_docs() if d.get("kind") == "PersistentVolumeClaim")


def test_rayjobs_clean_up_after_themselves():
    for name, job in ray_objects("RayJob"):
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] is True, name
        assert spec["ttlSecondsAfterFinished"] > 0, name
        assert spec["entrypoint"].startswith("python -m pipeline."), name


def test_rayjob_env_vars_follow_runtime_env_yaml():
    local = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())["env_vars"]
    for name, job in ray_objects("RayJob"):
        remote = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
        assert remote["env_vars"] == local, f"{name}: runtimeEnvYAML env_vars drifted from runtime_env.yaml"


def _entrypoint_parts(entrypoint: str) -> tuple[str, Path, list[str], list[str]]:
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "-m"], entrypoint
    module = argv[2]
    config = argv[argv.index("--config") + 1]
    assert config.startswith(IMAGE_CODE_DIR), f"--config {config} is not inside the image's copy of the repo"
    for arg in argv:  # every file the command names must be in the repo the image is built from
        if arg.startswith(IMAGE_CODE_DIR):
            assert (REPO / arg[len(IMAGE_CODE_DIR):]).is_file(), f"{arg}: no such file in the repo"
    flags = [a.split("=")[0] for a in argv[3:] if a.startswith("--") and a != "--config"]
    overrides = [a for a in argv[3:] if "=" in a and not a.startswith("-")]
    return module, REPO / config[len(IMAGE_CODE_DIR):], flags, overrides


def test_rayjob_entrypoints_fit_the_config_tree():
    """The entrypoint's YAML exists and its key=value overrides are keys of the config tree."""
    config_mod = pytest.importorskip("pipeline.config", reason="pipeline.config not written yet")
    for name, job in ray_objects("RayJob"):
        module, config, _, overrides = _entrypoint_parts(job["spec"]["entrypoint"])
        assert config.is_file(), f"{name}: {config} missing"
        config_mod.load_config(str(config), overrides)


@pytest.mark.parametrize("job", ["rayjob-train.yaml", "rayjob-tune.yaml"])
def test_rayjob_entrypoint_flags_exist(job):
    (doc,) = load_docs(KUBERAY / job)
    module, _, flags, _ = _entrypoint_parts(doc["spec"]["entrypoint"])
    source = REPO / module.replace(".", "/") / "__main__.py"   # every verb is a package
    if not source.exists():
        pytest.skip(f"{source.relative_to(REPO)} not written yet: cannot check the flags {flags} of {job}")
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    for flag in flags + ["--config"]:
        assert flag in out.stdout, f"{job}: {module} has no {flag}"


# --------------------------------------------------------------------------- who gets in


def all_cluster_yaml() -> list[tuple[str, Any]]:
    """Every YAML document under cluster/, plus the runtime envs embedded in RayJobs."""
    docs = [(f"{p.relative_to(REPO)}#{i}", d) for p in sorted(CLUSTER.rglob("*.yaml"))
            for i, d in enumerate(load_docs(p))]
    docs += [(f"{n} runtimeEnvYAML", yaml.safe_load(d["spec"]["runtimeEnvYAML"]))
             for n, d in ray_objects("RayJob")]
    return docs


def test_services_are_cluster_internal():
    for name, doc in kuberay_docs():
        for path, key, value in walk(doc):
            assert key not in ("hostNetwork", "hostPort", "nodePort", "enableIngress") or not value, (
                f"{name}{path}: exposes the pod outside the cluster")
        if doc.get("kind") == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", name
    for name, spec in cluster_specs():
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", name
    assert not [d for _, d in kuberay_docs() if d.get("kind") in ("Ingress", "Secret", "Route")]


SECRETISH = re.compile(r"pass(word|wd)?|secret|token|access[_-]?key|api[_-]?key|credential|private[_-]?key",
                       re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
KEY_LIKE = re.compile(r"\bAKIA[0-9A-Z]{16}\b|\b[0-9a-f]{32,}\b|-----BEGIN [A-Z ]*PRIVATE KEY")
REFERENCE_KEYS = re.compile(r"(Name|Ref|Path|_PATH|_path|File)$")


def secret_findings(doc: Any) -> list[str]:
    """Places where a credential would be written into the file instead of referenced."""
    found = []
    for path, key, value in walk(doc):
        if isinstance(value, dict) and "name" in value and ("value" in value or "valueFrom" in value):
            if SECRETISH.search(str(value["name"])) and "secretKeyRef" not in value.get("valueFrom", {}):
                found.append(f"{path}: env {value['name']} must come from a secretKeyRef")
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            text = str(value)
            if (key is not None and SECRETISH.search(str(key)) and not REFERENCE_KEYS.search(str(key))
                    and text and not text.startswith(("/", "~", "$("))):
                found.append(f"{path}: literal value for {key}")
            if URL_WITH_PASSWORD.search(text) or KEY_LIKE.search(text):
                found.append(f"{path}: looks like an inline credential")
    return found


def test_no_literal_secrets():
    for name, doc in all_cluster_yaml():
        assert secret_findings(doc) == [], name


@pytest.mark.parametrize("leak", [
    {"name": "DB_PASSWORD", "value": "hunter2"},
    {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "k"}}},
    {"name": "MLFLOW_BACKEND_STORE_URI", "value": "postgresql://mlflow:hunter2@db:5432/mlflow"},
    {"name": "RAY_AUTH_TOKEN", "value": "0123456789abcdef0123456789abcdef"},
])
def test_secret_scan_catches_leaks(leak):
    (_, job), *_ = ray_objects("RayJob")
    leaked = copy.deepcopy(job)
    leaked["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(leak)
    assert secret_findings(leaked), leak
    assert secret_findings({"provider": {"aws_secret_access_key": "abc"}})


def test_mlflow_credentials_come_from_secrets():
    (deploy,) = [d for _, d in kuberay_docs() if d.get("kind") == "Deployment"]
    env = {e["name"]: e for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    for var in ("MLFLOW_BACKEND_STORE_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert "secretKeyRef" in env[var]["valueFrom"], var
    args = " ".join(deploy["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--app-name=basic-auth" in args and "--backend-store-uri" not in args


# --------------------------------------------------------------------------- cluster launcher


@pytest.fixture(scope="module")
def ray_cluster_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_aws_yaml_validates_with_rays_schema(ray_cluster_schema):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    jsonschema.validate(cfg, ray_cluster_schema)
    validate_config(prepare_config(copy.deepcopy(cfg)))  # what `ray up` does after filling defaults
    workers = [t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]]
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in workers)
    assert all(0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"] for t in workers)
    assert "/home/ray/poster-ray" in cfg["file_mounts"]
    assert any("/home/ray/poster-ray" in c for c in cfg["setup_commands"])
    assert {".git", ".venv", "runs", "data"} <= set(cfg["rsync_exclude"])


@pytest.mark.parametrize("case", ["misspelled key", "wrong type", "missing node_config"])
def test_broken_aws_yaml_fails(ray_cluster_schema, case):
    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    if case == "misspelled key":
        cfg["max_worker"] = cfg.pop("max_workers")
    elif case == "wrong type":
        cfg["available_node_types"]["gpu_worker"]["max_workers"] = "8"
    else:
        del cfg["available_node_types"]["gpu_worker"]["node_config"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, ray_cluster_schema)


# --------------------------------------------------------------------------- runtime env


def runtime_env() -> dict:
    return yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())


@pytest.mark.parametrize("rel,excluded", [
    (".git/HEAD", True), (".git/objects/ab/cdef", True), (".venv/bin/python", True),
    ("runs/cluster/mlflow.db", True), ("runs/ray/x/checkpoint_000001/state.pt", True),
    ("data/rafdb/train/part-0.parquet", True), ("mlruns/0/meta.yaml", True), ("scratch.db", True),
    ("pipeline/__pycache__/train.cpython-311.pyc", True), ("bench/results/step.json", True),
    ("ir50.pth", True), ("rafdb_best.pth.tar", True),
    ("pipeline/train/driver.py", False), ("pipeline/train/data.py", False), ("configs/smoke.yaml", False),
    ("cluster/runtime_env.yaml", False), ("poster_model/__init__.py", False),
    ("tune_spaces/__init__.py", False), ("pyproject.toml", False), ("bench/model_step.py", False),
])
def test_runtime_env_excludes(tmp_path, rel, excluded):
    """Ray skips a path when it or a directory above it matches (it tests each before descending)."""
    from ray._private.runtime_env.packaging import _get_excludes

    match = _get_excludes(tmp_path, runtime_env()["excludes"])
    parts = Path(rel).parts
    hit = any(match(tmp_path.joinpath(*parts[:i])) for i in range(1, len(parts) + 1))
    assert hit == excluded, rel
    if excluded and len(parts) > 1:  # whole directories are cut at the top, not walked file by file
        assert any(match(tmp_path.joinpath(*parts[:i])) for i in range(1, len(parts))), rel


def test_runtime_env_is_plain_and_secret_free():
    env = runtime_env()
    assert set(env) == {"excludes", "env_vars"}, "code comes from --working-dir; no pip/conda here"
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "Ray wants string env values"
    assert env["env_vars"]["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"
    assert env["env_vars"]["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1"


def test_working_dir_upload_is_small(tmp_path):
    """Zip the checkout the way `ray job submit --working-dir .` does (excludes only, no .gitignore)."""
    from ray._private.runtime_env.packaging import create_package

    pkg = tmp_path / "pkg.zip"
    create_package(str(REPO), pkg, include_gitignore=False, excludes=runtime_env()["excludes"])
    names = zipfile.ZipFile(pkg).namelist()
    size = pkg.stat().st_size
    assert size < 5 * 2**20, f"working_dir upload is {size / 2**20:.1f} MiB"
    assert "cluster/runtime_env.yaml" in names and "pyproject.toml" in names
    assert not [n for n in names if n.startswith((".git/", ".venv/", "runs/", "data/"))]


# --------------------------------------------------------------------------- conventions


def test_every_cluster_file_starts_with_its_command():
    commands = ("ray ", "kubectl ", "docker ", "cluster/local.sh", "aws ")
    for path in sorted(p for p in CLUSTER.rglob("*") if p.is_file() and p.suffix != ".md"):
        lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#!")]
        assert lines[0].startswith("# ") and any(c in lines[0] for c in commands), (
            f"{path.relative_to(REPO)} should begin with a comment giving the command that uses it")
    assert os.access(CLUSTER / "local.sh", os.X_OK)


# --------------------------------------------------------------------------- pod security, network policy


def every_pod_spec() -> list[tuple[str, dict]]:
    """Each pod template: Ray head/workers, RayJob submitters, Deployments."""
    out = []
    for name, spec in cluster_specs():
        out += [(f"{name} {i}", pod) for i, pod in enumerate(pod_specs(spec))]
    for name, doc in ray_objects("RayJob"):
        out.append((f"{name} submitter", doc["spec"].get("submitterPodTemplate", {}).get("spec")))
    for name, doc in kuberay_docs():
        if doc.get("kind") == "Deployment":
            out.append((name, doc["spec"]["template"]["spec"]))
    return out


def pod_security_findings(pod: dict | None) -> list[str]:
    """What keeps a pod from running as a non-root user without privileges or a writable root."""
    if not pod:
        return ["no pod template (KubeRay's default has no securityContext)"]
    found = []
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        found.append("pod securityContext.runAsNonRoot is not true")
    if psc.get("runAsUser") == 0:
        found.append("pod runs as uid 0")
    mounts_ok = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        csc = c.get("securityContext") or {}
        where = f"container {c.get('name')}"
        if csc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation is not false")
        if csc.get("privileged"):
            found.append(f"{where}: privileged")
        if "ALL" not in (csc.get("capabilities") or {}).get("drop", []) or (csc.get("capabilities") or {}).get("add"):
            found.append(f"{where}: capabilities do not drop ALL (or add some)")
        if csc.get("readOnlyRootFilesystem") is not True:
            found.append(f"{where}: root file system is writable")
        elif not any(m["mountPath"] == "/tmp" and m["name"] in mounts_ok for m in c.get("volumeMounts", [])):
            found.append(f"{where}: read-only root without an emptyDir on /tmp (Ray and MLflow write there)")
        if csc.get("runAsUser") == 0 or csc.get("runAsNonRoot") is False:
            found.append(f"{where}: runs as root")
    return found


def test_every_pod_runs_unprivileged_non_root_read_only():
    pods = every_pod_spec()
    assert len(pods) >= 9  # 3 clusters x (head + worker group), 2 submitters, MLflow
    for name, pod in pods:
        assert pod_security_findings(pod) == [], name
    for name, spec in cluster_specs():  # the autoscaler sidecar runs in the head pod
        sc = spec.get("autoscalerOptions", {}).get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False and sc.get("capabilities") == {"drop": ["ALL"]}, name
        assert sc.get("runAsNonRoot") is True and sc.get("readOnlyRootFilesystem") is True, name


@pytest.mark.parametrize("break_it", ["drop pod securityContext", "drop container securityContext",
                                      "writable root", "no /tmp volume", "root user", "escalation"])
def test_pod_security_check_catches_each_gap(break_it):
    (_, spec), *_ = cluster_specs()
    pod = copy.deepcopy(spec["headGroupSpec"]["template"]["spec"])
    assert pod_security_findings(pod) == []
    c = pod["containers"][0]
    if break_it == "drop pod securityContext":
        del pod["securityContext"]
    elif break_it == "drop container securityContext":
        del c["securityContext"]
    elif break_it == "writable root":
        c["securityContext"]["readOnlyRootFilesystem"] = False
    elif break_it == "no /tmp volume":
        c["volumeMounts"] = [m for m in c["volumeMounts"] if m["mountPath"] != "/tmp"]
    elif break_it == "root user":
        pod["securityContext"]["runAsUser"] = 0
    else:
        c["securityContext"]["allowPrivilegeEscalation"] = True
    assert pod_security_findings(pod), break_it


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels are read here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admitted_ports(policies: list[dict], target: dict, source: dict) -> set | None:
    """Ports `source` may open on `target` under these policies (None = any port; set() = none;
    'unselected' when no policy selects the target, i.e. everything is allowed)."""
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], target)
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return "unselected"
    ports: set = set()
    for p in selecting:
        for rule in p["spec"].get("ingress", []):
            peers = rule.get("from")
            assert peers, f"{p['metadata']['name']}: a rule without 'from' admits everyone"
            for peer in peers:
                assert set(peer) == {"podSelector"}, f"{p['metadata']['name']}: only pod peers: {peer}"
            if any(_selects(peer["podSelector"], source) for peer in peers):
                if "ports" not in rule:
                    return None
                ports |= {pt["port"] for pt in rule["ports"]}
    return ports


def test_network_policy_admits_only_ray_pods_and_the_submitter_to_the_head():
    policies = [d for _, d in kuberay_docs() if d.get("kind") == "NetworkPolicy"]
    ray = {"ray.io/is-ray-node": "yes"}
    for name, spec in cluster_specs():
        head = {**spec["headGroupSpec"]["template"]["metadata"]["labels"], **ray, "ray.io/node-type": "head"}
        workers = [{**g["template"]["metadata"]["labels"], **ray, "ray.io/node-type": "worker"}
                   for g in spec.get("workerGroupSpecs", [])]
        for worker in workers:
            assert admitted_ports(policies, head, worker) is None, name          # Ray pods: all ports
            assert admitted_ports(policies, worker, head) is None, name
        for stranger in ({}, {"app": "web"}, {"app.kubernetes.io/part-of": "poster-ray"}):
            assert admitted_ports(policies, head, stranger) == set(), (name, stranger)
            for worker in workers:
                assert admitted_ports(policies, worker, stranger) == set(), (name, stranger)
    for name, job in ray_objects("RayJob"):
        submitter = job["spec"]["submitterPodTemplate"]["metadata"]["labels"]
        head = {**job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["metadata"]["labels"],
                **ray, "ray.io/node-type": "head"}
        assert admitted_ports(policies, head, submitter) == {8265}, name          # the job API only


def test_ray_pods_use_the_trainer_mlflow_identity_never_the_reviewer():
    for name, spec in cluster_specs():
        for pod in pod_specs(spec):
            for c in pod["containers"]:
                refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                        if e["name"].startswith("MLFLOW_TRACKING_") and "valueFrom" in e}
                assert refs == {"mlflow-trainer"}, (name, refs)
    text = "\n".join(p.read_text() for p in KUBERAY.glob("ray*.yaml"))
    assert "mlflow-reviewer" not in text


ADMIN_MARKS = ("mlflow-basic-auth", "MLFLOW_AUTH", "basic_auth.ini", "admin_password", "mlflow-auth",
               "mlflow server", "mlflow-reviewer")


def test_no_ray_node_or_job_gets_mlflow_admin_rights():
    """Job drivers run on the Ray head (and submitters beside it): no command a Ray node runs and no
    Ray pod may hold the MLflow admin configuration, the reviewer, or the MLflow server itself
    (whose database a job could otherwise edit behind the permission checks)."""
    doc = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    node_keys = [k for k in doc if k.endswith("_commands")]
    assert {"setup_commands", "head_start_ray_commands", "worker_start_ray_commands"} <= set(node_keys)
    node_text = " ".join(str(doc[k]) for k in node_keys) + " " + str(doc.get("file_mounts"))
    for mark in ADMIN_MARKS:
        assert mark not in node_text, mark
    assert "poster-ray/mlflow-trainer" in " ".join(doc["setup_commands"])  # the trainer only
    assert secret_findings(doc) == []
    host = (CLUSTER / "mlflow_host.sh").read_text()  # the admin config lives on the MLflow host alone
    assert "poster-ray/mlflow-basic-auth" in host and "mlflow server --app-name basic-auth" in host
    assert "ray start" not in host and "poster-ray/mlflow-trainer" not in host
    for path in KUBERAY.glob("ray*.yaml"):  # KubeRay: only the MLflow Deployment mounts mlflow-auth
        text = path.read_text()
        for mark in ADMIN_MARKS:
            assert mark not in text, (path.name, mark)
    auth_users = [d for _, d in kuberay_docs() if "mlflow-auth" in json.dumps(d)]
    assert [d["kind"] for d in auth_users] == ["Deployment"]
    assert auth_users[0]["metadata"]["name"] == "mlflow"
    readme = (CLUSTER / "README.md").read_text()
    assert "cluster/mlflow_host.sh" in readme and "Where the MLflow admin credentials live" in readme
