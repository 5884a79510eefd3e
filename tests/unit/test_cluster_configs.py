"""cluster/: every config passes the checks Ray's own launcher runs before it starts a node.

``ray up`` resolves a config with ``prepare_config`` (defaults, the local provider's
node type) and then ``validate_config`` (``ray/autoscaler/ray-schema.json`` plus its
cross-field rules); the KubeRay autoscaler turns a RayCluster spec into the same kind
of config with ``_derive_autoscaling_config_from_ray_cr``, which validates it too.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.util import prepare_config, validate_config

from rayeffi.cli import build_parser
from rayeffi.recipe import load_recipe
from rayeffi.stages.ray_session import TRIAL_RESOURCE

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
IMAGE_REPO = "/home/ray/rayeffi/"  # where cluster/Dockerfile puts the repository


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _launcher_config(name: str) -> dict:
    config = prepare_config(_load(name))
    validate_config(config)
    return config


def test_cluster_holds_the_three_configs_and_a_readme():
    assert {"local.yaml", "aws-gpu.yaml", "rayjob.yaml", "README.md"} <= {p.name for p in CLUSTER.iterdir()}


def test_on_premise_config_is_valid_and_has_no_node_types():
    raw = _load("local.yaml")
    assert raw["provider"]["type"] == "local" and "available_node_types" not in raw
    assert raw["provider"]["head_ip"] and len(raw["provider"]["worker_ips"]) == 2
    config = _launcher_config("local.yaml")
    (node_type,) = config["available_node_types"].values()  # the provider's own single node type
    assert node_type["min_workers"] == node_type["max_workers"] == 2
    assert TRIAL_RESOURCE in " ".join(config["head_start_ray_commands"])


def test_the_launcher_rejects_node_types_for_the_local_provider():
    raw = _load("local.yaml")
    raw["available_node_types"] = {"extra": {"node_config": {}, "resources": {}}}
    with pytest.raises(Exception, match="available_node_types is not supported"):
        prepare_config(raw)


def test_cloud_config_has_a_cpu_head_and_gpu_workers():
    config = _launcher_config("aws-gpu.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"][TRIAL_RESOURCE] >= 1
    assert workers and all(t["resources"]["GPU"] >= 1 and t["max_workers"] >= 1 for t in workers)
    assert sum(t["max_workers"] for t in workers) <= config["max_workers"]


def test_a_broken_launcher_config_fails_the_same_checks():
    raw = _load("aws-gpu.yaml")
    raw["available_node_types"]["gpu_worker"]["resource"] = {"GPU": 1}  # misspelt key
    with pytest.raises(Exception, match="resource"):
        validate_config(prepare_config(raw))


def _rayjob():
    job = _load("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    return job


def test_rayjob_cluster_spec_is_valid_for_the_kuberay_autoscaler():
    job = _rayjob()
    spec = job["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"  # Ray's default, set up by KubeRay
    config = _derive_autoscaling_config_from_ray_cr({"metadata": job["metadata"], "spec": spec})
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"][TRIAL_RESOURCE] >= 1
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert sum(t["min_workers"] for t in workers) >= 2  # the quickstart's two workers


def test_rayjob_entrypoint_is_rayeffi_run_on_a_recipe_of_this_repository():
    job = _rayjob()
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "rayeffi"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.address == "auto"
    assert args.recipe.startswith(IMAGE_REPO)
    load_recipe(ROOT / args.recipe[len(IMAGE_REPO):])  # the recipe the image carries validates
    # results go to a volume every pod mounts (the workers write checkpoints there too)
    spec = job["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        mounts = [m["mountPath"] for c in group["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])]
        assert any(args.out.startswith(mount + "/") for mount in mounts), group.get("groupName", "head")


def test_the_image_is_built_on_this_ray_version():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-" in dockerfile
    images = {c["image"] for g in [_rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"],
                                   *_rayjob()["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1


def test_readme_explains_the_commands():
    text = (CLUSTER / "README.md").read_text()
    for command in ("ray up", "ray submit", "ray job submit", "rayeffi submit", "--storage", "--resume"):
        assert command in text, command


def test_the_ray_submit_script_is_rayeffis_command_line(monkeypatch, capsys):
    import runpy

    monkeypatch.setattr("sys.argv", ["rayeffi_job.py", "run", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(CLUSTER / "rayeffi_job.py"), run_name="__main__")
    assert exit_info.value.code == 0 and "--resume" in capsys.readouterr().out
