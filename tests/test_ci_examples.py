"""examples/ci: both CI examples parse as YAML and show what the issue asks of them (a
kernel matrix, the msixlab cache, results/ uploaded, the JUnit file published), every
``msixlab`` command line in them is accepted by msixlab's own argument parser, and each
passes its platform's own checker: actionlint for the GitHub workflow, check-jsonschema's
bundled GitLab CI schema for the GitLab file."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.host.cli import parser

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "ci"


def load(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def msixlab_argv(line: str, values: dict[str, str]) -> list[str] | None:
    """The arguments of the ``msixlab`` call in a script line, variables filled in."""
    for name, value in values.items():
        line = line.replace("${{ matrix.%s }}" % name, value).replace(f"${name}", value)
    words = shlex.split(line)
    for i, word in enumerate(words):
        if word.endswith("bin/msixlab") or word == "msixlab":
            return words[i + 1:]
    return None


def assert_parses(argv: list[str]) -> None:
    try:
        parser().parse_args(argv)
    except SystemExit as err:                  # argparse's way of refusing
        pytest.fail(f"msixlab refuses {argv}: exit {err.code}")


def test_github_actions_example():
    doc = load("github-actions.yml")
    assert True in doc or "on" in doc                      # YAML 1.1 reads `on` as true
    (job,) = doc["jobs"].values()
    matrix = job["strategy"]["matrix"]["include"]
    assert {m["run_args"] for m in matrix} == {"--flavor default", "--flavor lts"}
    steps = job["steps"]
    uses = {s["uses"].split("@")[0]: s for s in steps if "uses" in s}
    assert all("@v" in s["uses"] for s in steps if "uses" in s)          # pinned versions
    assert uses["actions/cache"]["with"]["path"] == job["env"]["MSIXLAB_CACHE"]
    assert uses["actions/upload-artifact"]["with"]["path"] == "results/"
    assert uses["actions/upload-artifact"]["if"] == "always()"
    assert uses["mikepenz/action-junit-report"]["with"]["report_paths"] == "results/run-*/junit.xml"
    runs = [argv for m in matrix for s in steps if "run" in s
            if (argv := msixlab_argv(s["run"], m)) is not None]
    assert len(runs) == len(matrix)
    for argv in runs:
        assert argv[0] == "run"
        assert_parses(argv)


def test_gitlab_ci_example():
    doc = load("gitlab-ci.yml")
    job = doc["msixlab"]
    assert job["stage"] in doc["stages"]
    matrix = job["parallel"]["matrix"]
    assert {m["RUN_ARGS"] for m in matrix} == {"--flavor default", "--flavor lts"}
    cache_dir = job["variables"]["MSIXLAB_CACHE"].replace("$CI_PROJECT_DIR/", "")
    assert job["cache"]["paths"] == [cache_dir + "/"]
    assert len(job["cache"]["key"]["files"]) <= 2                         # GitLab's limit
    assert job["artifacts"]["when"] == "always" and "results/" in job["artifacts"]["paths"]
    assert job["artifacts"]["reports"]["junit"] == "results/run-*/junit.xml"
    runs = [argv for m in matrix for line in job["script"]
            if (argv := msixlab_argv(line, m)) is not None]
    assert len(runs) == len(matrix)
    for argv in runs:
        assert argv[0] == "run"
        assert_parses(argv)


def test_the_argv_check_catches_an_option_msixlab_lacks():
    with pytest.raises(pytest.fail.Exception, match="refuses"):
        assert_parses(["run", "--flavor", "default", "--no-such-option"])


def _tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def test_github_actions_example_passes_actionlint():
    """actionlint knows each action's runtime: a deprecated one (node20) fails here."""
    done = subprocess.run([_tool("actionlint"), "-no-color", str(EXAMPLES / "github-actions.yml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_gitlab_example_passes_gitlabs_schema():
    done = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci",
                           str(EXAMPLES / "gitlab-ci.yml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("tool,argv,broken", [
    ("actionlint", ["-no-color"], "jobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
                                  "      - run: echo ${{ matrix.nope }}\n"),
    ("check-jsonschema", ["--builtin-schema", "vendor.gitlab-ci"],
     "msixlab:\n  stage: test\n  script: 3\n  when: sometimes\n"),
])
def test_each_checker_refuses_a_broken_file(tool, argv, broken, tmp_path):
    """The checkers can fail: a file each must refuse."""
    path = tmp_path / "broken.yml"
    path.write_text(("on: push\n" if tool == "actionlint" else "") + broken)
    done = subprocess.run([_tool(tool), *argv, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0, done.stdout + done.stderr
