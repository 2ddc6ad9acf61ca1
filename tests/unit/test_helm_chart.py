"""The Kubernetes chart (deploy/kubernetes/nightjar): rendered by `helm template`, checked.

Built-in objects are validated offline against the Kubernetes API schemas that the
kubernetes-validate package ships; the CRDs (ServiceMonitor, KEDA's ScaledObject) have no
schema there, so their structure is checked here against the objects they point at. Helm
comes from `make helm` (built from the Go module proxy); without it the tests skip, except in
CI (CI=true), where a missing Helm is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "kubernetes" / "nightjar"
GPU_VALUES = CHART / "values-gpu.yaml"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
# The oldest and newest API versions the chart is checked against (Chart.yaml: >=1.27).
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}
WORKLOADS = ("Deployment", "StatefulSet", "Job")
SECRET_NAMES = re.compile(r"(URI|TOKEN|PASSWORD)$")
# Settings keys another change adds; the chart may set them before that change lands.
PENDING_SETTINGS: set[tuple[str, str]] = set()

Manifest = dict[str, Any]


def helm_binary() -> str:
    """Helm from NIGHTJAR_HELM, the `make helm` cache, or PATH; skip (fail in CI) without."""
    version = re.search(r"^HELM_VERSION := (\S+)", (REPO / "Makefile").read_text(), re.M)
    assert version, "the Makefile must pin HELM_VERSION"
    cache = Path(os.environ.get("NIGHTJAR_CACHE", Path.home() / ".cache" / "nightjar"))
    for candidate in (os.environ.get("NIGHTJAR_HELM"), cache / "helm" / version[1] / "helm"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    found = shutil.which("helm")
    if found:
        return found
    reason = f"helm not found (NIGHTJAR_HELM, {cache}/helm/{version[1]}, PATH); run `make helm`"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must render the chart")
    pytest.skip(reason)


def render(*values: Path, chart: Path = CHART, sets: tuple[str, ...] = ()) -> list[Manifest]:
    argv = [helm_binary(), "template", "nightjar", str(chart), "--namespace", "alerts"]
    argv += ["--kube-version", KUBERNETES_VERSIONS[0]]
    for path in values:
        argv += ["-f", str(path)]
    for assignment in sets:
        argv += ["--set", assignment]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def default() -> list[Manifest]:
    return render()


@pytest.fixture(scope="module")
def gpu() -> list[Manifest]:
    return render(GPU_VALUES)


@pytest.fixture(scope="module")
def full() -> list[Manifest]:
    return render(FULL_VALUES)


@pytest.fixture(scope="module", params=["default", "gpu", "full"])
def rendered(request: pytest.FixtureRequest) -> list[Manifest]:
    return request.getfixturevalue(request.param)


def find(objects: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_specs(objects: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            yield obj, obj["spec"]["template"]["spec"]


def env_of(container: Manifest) -> dict[str, Manifest]:
    return {item["name"]: item for item in container.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_builtin_objects_validate_against_the_kubernetes_schemas(
    rendered: list[Manifest],
) -> None:
    import kubernetes_validate

    for obj in rendered:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue  # no schema shipped; checked structurally below
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(str(part) for part in exc.absolute_path)
                what = f"{obj['kind']}/{obj['metadata']['name']} @ {version}: {where}"
                pytest.fail(f"{what}: {exc.message[:300]}")


def test_every_container_has_probes_and_limits(rendered: list[Manifest]) -> None:
    for obj, spec in pod_specs(rendered):
        for container in spec["containers"] + spec.get("initContainers", []):
            what = f"{obj['kind']}/{obj['metadata']['name']} container {container['name']}"
            limits = container.get("resources", {}).get("limits", {})
            assert {"cpu", "memory"} <= limits.keys(), f"{what}: no cpu/memory limits"
            assert container.get("resources", {}).get("requests"), f"{what}: no requests"
        if obj["kind"] == "Job":
            continue  # runs once to completion: no probes
        for container in spec["containers"]:
            what = f"{obj['kind']}/{obj['metadata']['name']} container {container['name']}"
            assert "livenessProbe" in container, f"{what}: no liveness probe"
            assert "readinessProbe" in container, f"{what}: no readiness probe"


def test_nightjar_probes_use_livez_and_readyz(default: list[Manifest]) -> None:
    for kind, name in (("StatefulSet", "nightjar-broker"), ("Deployment", "nightjar-poster")):
        (container,) = find(default, kind, name)["spec"]["template"]["spec"]["containers"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports["metrics"] == 9108
        assert env_of(container)["NIGHTJAR_METRICS__HOST"]["value"] == "0.0.0.0"


def test_broker_pod_name_is_the_kafka_instance_name(rendered: list[Manifest]) -> None:
    brokers = find(rendered, "StatefulSet", "nightjar-broker")
    spec = brokers["spec"]
    assert spec["replicas"] == 2 and spec["podManagementPolicy"] == "Parallel"
    governing = find(rendered, "Service", spec["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"] == ["run"]
    instance = env_of(container)["NIGHTJAR_KAFKA__INSTANCE_NAME"]
    assert instance["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_every_setting_variable_names_a_settings_field(rendered: list[Manifest]) -> None:
    for obj, spec in pod_specs(rendered):
        for container in spec["containers"] + spec.get("initContainers", []):
            for name in env_of(container):
                if not name.startswith("NIGHTJAR_") or name == "NIGHTJAR_CONFIG":
                    continue
                section, _, key = name.removeprefix("NIGHTJAR_").lower().partition("__")
                assert section in Settings.model_fields, f"{obj['metadata']['name']}: {name}"
                model = Settings.model_fields[section].annotation
                key = key.split("__")[0]
                known = key in model.model_fields  # type: ignore[union-attr]
                assert known or (section, key) in PENDING_SETTINGS, (
                    f"{obj['metadata']['name']}: {name} sets no field of {section}"
                )


def scheduler_address(objects: list[Manifest]) -> str:
    service = find(objects, "Service", "nightjar-scheduler")
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "comm")
    return f"tcp://{service['metadata']['name']}:{port}"


def test_scheduler_address_reaches_brokers_poster_and_workers(rendered: list[Manifest]) -> None:
    address = scheduler_address(rendered)
    scheduler = find(rendered, "Deployment", "nightjar-scheduler")
    command = scheduler["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["dask", "scheduler"]
    assert command[command.index("--port") + 1] == address.rsplit(":", 1)[1]
    for name in ("nightjar-broker", "nightjar-poster"):
        workload = next(o for o, _ in pod_specs(rendered) if o["metadata"]["name"] == name)
        container = workload["spec"]["template"]["spec"]["containers"][0]
        assert env_of(container)["NIGHTJAR_DISPATCH__SCHEDULER_ADDRESS"]["value"] == address
    workers = [
        o for o, _ in pod_specs(rendered) if o["metadata"]["name"].startswith("nightjar-worker")
    ]
    assert workers
    for worker in workers:
        container = worker["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][:3] == ["dask", "worker", address]
        assert env_of(container)["NIGHTJAR_DISPATCH__SCHEDULER_ADDRESS"]["value"] == address


def test_gpu_values_give_the_gpu_pool_its_device_placement_and_provider(
    default: list[Manifest], gpu: list[Manifest]
) -> None:
    values = yaml.safe_load(GPU_VALUES.read_text())["workerGpu"]
    pool = find(gpu, "Deployment", "nightjar-worker-gpu")
    spec = pool["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "nightjar-worker-gpu:latest"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == values["gpus"] == 1
    assert spec["nodeSelector"] == values["nodeSelector"]
    assert spec["tolerations"] == values["tolerations"]
    assert env_of(container)["NIGHTJAR_MODELS__PROVIDER"]["value"] == "cuda"
    find(gpu, "PodDisruptionBudget", "nightjar-worker-gpu")
    cpu = find(gpu, "Deployment", "nightjar-worker")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert "NIGHTJAR_MODELS__PROVIDER" not in env_of(cpu["containers"][0])
    assert not [o for o in default if o["metadata"]["name"] == "nightjar-worker-gpu"]
    assert "nvidia.com/gpu" not in json.dumps(default)


def test_secrets_are_referenced_never_inlined(rendered: list[Manifest]) -> None:
    assert not [o for o in rendered if o["kind"] == "Secret"]
    for obj, spec in pod_specs(rendered):
        for container in spec["containers"]:
            for name, item in env_of(container).items():
                if not SECRET_NAMES.search(name):
                    continue
                what = f"{obj['metadata']['name']}/{container['name']}: {name}"
                if "value" in item:
                    # Only the in-cluster MongoDB's address, which holds no credentials.
                    assert name == "NIGHTJAR_MONGO__URI" and "@" not in item["value"], what
                else:
                    assert "secretKeyRef" in item["valueFrom"], what
                # Workers do no I/O besides reading models: they hold no credentials.
                assert not obj["metadata"]["name"].startswith("nightjar-worker"), what


def test_external_mongo_and_fritz_token_come_from_the_named_secrets(
    default: list[Manifest],
) -> None:
    broker = find(default, "StatefulSet", "nightjar-broker")["spec"]["template"]["spec"]
    uri = env_of(broker["containers"][0])["NIGHTJAR_MONGO__URI"]["valueFrom"]["secretKeyRef"]
    assert uri == {"name": "nightjar-mongo", "key": "uri"}
    # Brokers hold no Fritz token: posting happens in the poster only.
    assert "NIGHTJAR_FRITZ__TOKEN" not in env_of(broker["containers"][0])
    poster = find(default, "Deployment", "nightjar-poster")["spec"]["template"]["spec"]
    (container,) = poster["containers"]
    assert container["args"] == ["post", "--metrics-port", "9108"]
    token = env_of(container)["NIGHTJAR_FRITZ__TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "nightjar-fritz-token", "key": "token"}


def compose_images() -> set[str]:
    """Images of docker-compose.yml, and nightjar-<name> for each services/<name>/Dockerfile
    (the Fritz-like service's image is built from its Dockerfile; compose does not run it)."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    # Compose tags read `${NIGHTJAR_VERSION:-latest}`: what an operator gets by default.
    found = {
        re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", service["image"])
        for service in compose["services"].values()
        if service.get("image")
    }
    found |= {f"nightjar-{path.parent.name}:latest" for path in REPO.glob("services/*/Dockerfile")}
    return {image for image in found if image}


def test_the_chart_runs_the_compose_images(rendered: list[Manifest]) -> None:
    allowed = compose_images()
    for obj, spec in pod_specs(rendered):
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["image"] in allowed, (
                f"{obj['metadata']['name']}/{container['name']}: {container['image']} is not "
                f"an image of docker-compose.yml ({sorted(allowed)})"
            )


def test_services_and_budgets_select_pods_and_ports(rendered: list[Manifest]) -> None:
    pods = [(spec, o["spec"]["template"]["metadata"]["labels"]) for o, spec in pod_specs(rendered)]
    for service in (o for o in rendered if o["kind"] == "Service"):
        matched = [spec for spec, labels in pods if selects(service["spec"]["selector"], labels)]
        assert matched, f"Service {service['metadata']['name']} selects no pods"
        for spec in matched:
            named = {p["name"] for c in spec["containers"] for p in c.get("ports", [])}
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in named, f"{service['metadata']['name']}: {port}"
    budgets = {o["metadata"]["name"]: o for o in rendered if o["kind"] == "PodDisruptionBudget"}
    assert {"nightjar-broker", "nightjar-poster", "nightjar-worker"} <= budgets.keys()
    for name, budget in budgets.items():
        matched = [
            labels
            for _, labels in pods
            if selects(budget["spec"]["selector"]["matchLabels"], labels)
        ]
        assert len(matched) == 1, f"PodDisruptionBudget {name} selects {len(matched)} workloads"


def test_models_job_fills_the_volume_the_workers_wait_for(default: list[Manifest]) -> None:
    (job,) = [o for o in default if o["kind"] == "Job"]
    spec = job["spec"]["template"]["spec"]
    (fetch,) = spec["containers"]
    assert fetch["image"] == "nightjar-models:latest"
    assert "nightjar models fetch --quiet --models-dir /models" in fetch["args"][0]
    claim = find(default, "PersistentVolumeClaim", "nightjar-models")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "nightjar-models"
    marker = fetch["args"][0].rsplit("> ", 1)[1]
    worker = find(default, "Deployment", "nightjar-worker")["spec"]["template"]["spec"]
    (wait,) = worker["initContainers"]
    assert marker in wait["args"][0]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "nightjar-models"}} in worker[
        "volumes"
    ]


def test_init_container_mode_fetches_in_every_worker_pod(full: list[Manifest]) -> None:
    assert not [o for o in full if o["kind"] in ("Job", "PersistentVolumeClaim")]
    for name in ("nightjar-worker", "nightjar-worker-gpu"):
        spec = find(full, "Deployment", name)["spec"]["template"]["spec"]
        (fetch,) = spec["initContainers"]
        assert fetch["image"] == "nightjar-models:latest"
        assert fetch["args"] == [
            "exec nightjar models fetch --quiet --models-dir /models --mirror /mirror"
        ]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes["models"]
        assert volumes["mirror"]["persistentVolumeClaim"]["claimName"] == "nightjar-models-mirror"


def test_service_monitors_point_at_named_ports(
    full: list[Manifest], default: list[Manifest]
) -> None:
    assert not [o for o in default if (o["apiVersion"], o["kind"]) in CRD_KINDS]
    monitors = [o for o in full if o["kind"] == "ServiceMonitor"]
    names = {monitor["metadata"]["name"] for monitor in monitors}
    assert names == {"nightjar-broker", "nightjar-poster", "nightjar-scheduler", "nightjar-workers"}
    services = [o for o in full if o["kind"] == "Service"]
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        selector = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [s for s in services if selects(selector, s["metadata"]["labels"])]
        ports = {port["name"] for port in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
            assert re.fullmatch(r"\d+[smh]", endpoint["interval"])


def test_keda_scales_the_cpu_workers_on_consumer_lag(full: list[Manifest]) -> None:
    (scaled,) = [o for o in full if o["kind"] == "ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    worker = find(full, target["kind"], target["name"])
    assert target["name"] == "nightjar-worker" and "replicas" not in worker["spec"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA wants strings"
    broker = find(full, "StatefulSet", "nightjar-broker")["spec"]["template"]["spec"]
    env = env_of(broker["containers"][0])
    assert metadata["consumerGroup"] == env["NIGHTJAR_KAFKA__GROUP_ID"]["value"]
    assert metadata["bootstrapServers"] == env["NIGHTJAR_KAFKA__BOOTSTRAP_SERVERS"]["value"]
    assert metadata["allowIdleConsumers"] == "true" and int(metadata["lagThreshold"]) > 0


def test_keda_prometheus_trigger_reads_the_brokers_lag() -> None:
    objects = render(FULL_VALUES, sets=("autoscaling.trigger=prometheus",))
    (scaled,) = [o for o in objects if o["kind"] == "ScaledObject"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == 'sum(nightjar_consume_lag_messages{namespace="alerts"})'


def test_in_cluster_services_and_config_reach_the_containers(full: list[Manifest]) -> None:
    broker = find(full, "StatefulSet", "nightjar-broker")["spec"]["template"]["spec"]
    env = env_of(broker["containers"][0])
    assert env["NIGHTJAR_KAFKA__BOOTSTRAP_SERVERS"]["value"] == "nightjar-kafka:9092"
    assert env["NIGHTJAR_MONGO__URI"]["value"] == "mongodb://nightjar-mongo:27017"
    assert json.loads(env["NIGHTJAR_KAFKA__TOPICS"]["value"]) == ["^ztf_[0-9]+_programid[0-9]+$"]
    find(full, "StatefulSet", "nightjar-kafka")
    find(full, "StatefulSet", "nightjar-mongo")
    config = find(full, "ConfigMap", "nightjar-config")
    assert yaml.safe_load(config["data"]["nightjar.yaml"]) == {"dispatch": {"batch_size": 1000}}
    assert env["NIGHTJAR_CONFIG"]["value"] == "/etc/nightjar/nightjar.yaml"
    poster = find(full, "Deployment", "nightjar-poster")["spec"]["template"]["spec"]
    url = env_of(poster["containers"][0])["NIGHTJAR_FRITZ__URL"]["value"]
    fritz = find(full, "Service", "nightjar-fritz")
    assert url == f"http://nightjar-fritz:{fritz['spec']['ports'][0]['port']}"


def test_missing_required_values_fail_with_the_value_to_set() -> None:
    argv = [helm_binary(), "template", "nightjar", str(CHART), "--set", "poster.fritzUrl="]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "poster.fritzUrl is required" in done.stderr


def test_chart_dashboards_are_copies_of_the_grafana_ones() -> None:
    originals = {p.name: p.read_bytes() for p in DASHBOARDS.glob("*.json")}
    copies = {p.name: p.read_bytes() for p in (CHART / "dashboards").glob("*.json")}
    assert copies == originals, "run `make chart-dashboards` to copy deploy/grafana/dashboards"


def test_dashboards_render_as_configmaps(tmp_path: Path, default: list[Manifest]) -> None:
    chart = tmp_path / "nightjar"
    shutil.copytree(CHART, chart)
    for old in (chart / "dashboards").glob("*.json"):
        old.unlink()
    dashboard = {"title": "Nightjar test", "panels": [{"type": "timeseries"}]}
    (chart / "dashboards" / "Nightjar_Overview.json").write_text(json.dumps(dashboard))
    maps = [o for o in render(chart=chart) if o["kind"] == "ConfigMap"]
    (config_map,) = [m for m in maps if m["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert config_map["metadata"]["name"] == "nightjar-dashboard-nightjar-overview"
    assert json.loads(config_map["data"]["Nightjar_Overview.json"]) == dashboard
    copied = len(list((CHART / "dashboards").glob("*.json")))
    labelled = [o for o in default if o["metadata"].get("labels", {}).get("grafana_dashboard")]
    assert len(labelled) == copied  # none while deploy/grafana/dashboards is empty


def test_helm_lint_passes_for_default_and_gpu_values() -> None:
    for extra in ([], ["-f", str(GPU_VALUES)], ["-f", str(FULL_VALUES)]):
        argv = [helm_binary(), "lint", str(CHART), *extra]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"helm lint {' '.join(extra)}:\n{done.stdout}{done.stderr}"
