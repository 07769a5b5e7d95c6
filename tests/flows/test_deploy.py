"""deploy/prefect.yaml: every entrypoint imports and resolves, parameters fit the flows, pools are defined.

``prefect deploy --all`` against a real (PostgreSQL-backed) server is exercised by
tests/test_server_e2e.py through scripts/deploy.sh.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

SPEC = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
DEPLOYMENTS = SPEC["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: f"{d['entrypoint']}:{d['name']}")
def test_entrypoint_resolves_and_parameters_validate(deployment: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(ROOT)  # entrypoints are relative to the repository root, as for `prefect deploy`
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    assert flow.name.startswith("pairforge-")
    validated = flow.validate_parameters(deployment.get("parameters") or {})
    assert set(validated) >= set(deployment.get("parameters") or {})


def test_parent_deployment_is_weekly_and_triggers_the_other_deployments(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(ROOT)
    parent = next(d for d in DEPLOYMENTS if d["entrypoint"].endswith(":pairforge_pipeline"))
    assert [s["cron"] for s in parent["schedules"]] == ["0 3 * * 1"]
    names = {f"{load_flow_from_entrypoint(d['entrypoint']).name}/{d['name']}" for d in DEPLOYMENTS}
    assert parent["parameters"]["train_deployment"] in names
    assert parent["parameters"]["evaluate_deployment"] in names
    assert {s["source"] for s in parent["parameters"]["sources"]} <= {"reddit", "s2orc", "specter", "nli", "qqp", "pairs"}


def test_weekly_runs_never_overlap() -> None:
    from prefect.cli.deploy._models import ConcurrencyLimitSpec
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    parent = next(d for d in DEPLOYMENTS if d["entrypoint"].endswith(":pairforge_pipeline"))
    limit = ConcurrencyLimitSpec.model_validate(parent["concurrency_limit"])
    assert limit.limit == 1
    assert ConcurrencyLimitStrategy(limit.collision_strategy) is ConcurrencyLimitStrategy.CANCEL_NEW


def test_work_pools_cover_every_deployment() -> None:
    pools = {d["work_pool"]["name"] for d in DEPLOYMENTS}
    assert pools == {"cpu", "gpu", "gpu-host"}
    script = (ROOT / "scripts" / "deploy.sh").read_text()
    for pool in pools:
        assert f"work-pool create {pool} " in script


def test_gpu_pool_template_requests_gpus_with_node_selector_and_tolerations() -> None:
    template = json.loads((ROOT / "deploy" / "gpu-kubernetes-job-template.json").read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert pod["nodeSelector"] == "{{ node_selector }}" and pod["tolerations"] == "{{ tolerations }}"
    variables = template["variables"]["properties"]
    for name in ("gpu_count", "node_selector", "tolerations", "image", "namespace"):
        assert name in variables
    # every {{ placeholder }} of the job configuration is a declared variable
    placeholders = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert placeholders <= set(variables)


def test_gpu_deployment_trains_with_one_process_per_gpu_of_the_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pod gets the job variable's GPUs, and the flow trains with one process per GPU it sees.

    The pod requests and is limited to ``gpu_count`` GPUs (so inside it, CUDA sees that
    many: pipeline.devices.gpu_count counts them, tests/test_devices.py), and every
    ``gpu`` deployment leaves ``nproc`` at ``auto`` and the device unforced, so that count
    decides the torchrun processes (pipeline.train.launch.resolve_process_count).
    """
    import inspect

    from prefect.flows import load_flow_from_entrypoint

    from pipeline.train.config import TrainConfig

    monkeypatch.chdir(ROOT)
    template = json.loads((ROOT / "deploy" / "gpu-kubernetes-job-template.json").read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]  # NCCL needs more than 64Mi
    for kind in ("requests", "limits"):
        assert container["resources"][kind]["nvidia.com/gpu"] == "{{ gpu_count }}", kind
    gpu_deployments = [d for d in DEPLOYMENTS if d["work_pool"]["name"] == "gpu"]
    assert gpu_deployments
    for deployment in gpu_deployments:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        nproc = (deployment.get("parameters") or {}).get("nproc", inspect.signature(flow.fn).parameters["nproc"].default)
        assert flow.validate_parameters({**deployment["parameters"], "nproc": nproc})["nproc"] == "auto", deployment["name"]
        assert TrainConfig(**deployment["parameters"].get("options", {})).device != "cpu", deployment["name"]


def test_flow_modules_do_not_shadow_top_level_packages() -> None:
    """Workers load an entrypoint file with its folder on sys.path: flows/pipeline.py would hide the library."""
    import importlib.util
    import sys

    for path in sorted((ROOT / "flows").glob("*.py")):
        stem = path.stem
        if stem == "__init__":
            continue
        assert stem not in sys.stdlib_module_names, path
        spec = importlib.util.find_spec(stem)
        found_elsewhere = spec is not None and spec.origin is not None and Path(spec.origin).parent != path.parent
        assert stem not in {"pipeline", "flows"} and not found_elsewhere, f"{path} shadows a top-level module"
