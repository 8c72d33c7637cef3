"""The CI workflows are linted offline (schema-valid, zizmor-clean: no untrusted input in shell,
pinned actions), and the GPU side is checked for what it promises: every GPU job installs the
lock (constraints-gpu.txt), a pull request that changes one pin is measured against exactly that
pin's base version, forks never reach the self-hosted runner, only the commenting job may write,
comments and job summaries fit GitHub's caps, Renovate proposes bumps of the lock, the weekly
canary compares each library's newest release against the lock and keeps one issue up to date, and
the nightly derives its baselines from the results store's branch, which only main's runs push to."""

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
LOCK = ROOT / "constraints-gpu.txt"
RENOVATE = ROOT / ".github" / "renovate.json"
TRIM = ROOT / "scripts" / "trim-markdown.py"
GPU_JOB = ROOT / "scripts" / "gpu-job.sh"
FORK_GUARD = "github.event.pull_request.head.repo.full_name == github.repository"
MEASURED = ("torch", "transformers", "bitsandbytes", "onnxruntime-gpu", "torchao")


def _tool(name):
    path = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(path).exists():
        pytest.skip(f"{name} is not installed: pip install 'quantperf[test]'")
    return path


def _load(path):
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(Path(path).read_text())
    # PyYAML reads the bare key `on` as the boolean True.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def _workflow(name):
    return _load(ROOT / ".github" / "workflows" / name)


def _runs_on(job) -> list:
    runs_on = job.get("runs-on", [])
    return [runs_on] if isinstance(runs_on, str) else list(runs_on)


def _run_text(job) -> str:
    return "\n".join(step.get("run", "") for step in job.get("steps", []))


def _uses(job) -> list:
    return [step["uses"] for step in job.get("steps", []) if "uses" in step]


def _pins(text: str) -> dict:
    """The lock's lines, each parsed: canonical name -> (name, version)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==" and "*" not in spec[0].version, \
            f"line {number}: {raw!r} is not one exact pin NAME==VERSION"
        assert not (req.extras or req.marker or req.url), f"line {number}: {raw!r}: no extras, markers or URLs"
        key = canonicalize_name(req.name)
        assert key not in pins, f"line {number}: {req.name} is pinned twice"
        pins[key] = (req.name, spec[0].version)
    return pins


# -- lint ---------------------------------------------------------------------------------------

def test_there_is_a_cpu_and_a_gpu_workflow():
    names = {p.stem for p in WORKFLOWS}
    assert {"cpu", "gpu", "ab", "upgrade", "canary"} <= names
    gpu = (WORKFLOWS[0].parent / "gpu.yml").read_text()
    assert "self-hosted" in gpu and "gpu" in gpu and "scripts/gpu-job.sh" in gpu


def test_workflows_are_schema_valid():
    out = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                          *map(str, WORKFLOWS)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_workflows_are_zizmor_clean():
    out = subprocess.run([_tool("zizmor"), "--offline", "--no-progress", *map(str, WORKFLOWS)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# -- (1) the lock -------------------------------------------------------------------------------

def test_the_lock_pins_the_gpu_stack_exactly():
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _pins(LOCK.read_text())
    assert set(MEASURED) <= set(pins), f"the lock misses {sorted(set(MEASURED) - set(pins))}"
    # Every pin lies inside pyproject.toml's range for that package, or the install would fail.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"]) + list(project["optional-dependencies"]["gpu"])
    for dep in map(Requirement, declared):
        key = canonicalize_name(dep.name)
        if key in pins:
            assert dep.specifier.contains(pins[key][1], prereleases=True), \
                f"constraints-gpu.txt pins {key}=={pins[key][1]}, outside pyproject.toml's {dep}"
    # What the project's own tooling reads from the file is every line.
    from quantperf.experiments.environments import exact_pins

    assert set(exact_pins(LOCK.read_text())) == set(pins)


# -- (2) every GPU install goes through the lock -------------------------------------------------

def _fake_python(tmp_path) -> Path:
    """A `python3` on PATH whose `-m venv DIR` makes a venv whose `python` only logs its args."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    log = tmp_path / "python.log"
    venv_python = ("#!/bin/sh\n"
                   f"echo \"$*\" >> '{log}'\n")
    script = ("#!/bin/sh\n"
              "if [ \"$1\" = -m ] && [ \"$2\" = venv ]; then\n"
              "  mkdir -p \"$3/bin\"\n"
              "  printf 'PATH=\"%s/bin:$PATH\"\\n' \"$(cd \"$3\" && pwd)\" > \"$3/bin/activate\"\n"
              f"  cat > \"$3/bin/python\" <<'EOF'\n{venv_python}EOF\n"
              "  chmod +x \"$3/bin/python\"\n"
              "  exit 0\n"
              "fi\n"
              f"echo \"python3 $*\" >> '{log}'\n")
    path = bin_dir / "python3"
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return log


def _gpu_job_install(tmp_path, **env) -> list:
    """Run a copy of scripts/gpu-job.sh in a scratch checkout with QUANTPERF_INSTALL_ONLY=1 and a
    fake Python; return the pip install commands it ran."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(GPU_JOB, repo / "scripts" / "gpu-job.sh")
    shutil.copy(LOCK, repo / "constraints-gpu.txt")
    log = _fake_python(tmp_path)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTPERF_")}
    full_env.update(PATH=f"{tmp_path / 'fakebin'}{os.pathsep}{os.environ['PATH']}", QUANTPERF_INSTALL_ONLY="1", **env)
    out = subprocess.run(["bash", str(repo / "scripts" / "gpu-job.sh")], cwd=repo, env=full_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return [line for line in log.read_text().splitlines() if "pip install" in line and "-e" in line.split()]


def test_gpu_job_installs_the_lock(tmp_path):
    if not shutil.which("bash"):
        pytest.skip("needs bash")
    (cmd,) = _gpu_job_install(tmp_path / "default")
    assert cmd.split()[-2:] == ["-c", "constraints-gpu.txt"], cmd
    (cmd,) = _gpu_job_install(tmp_path / "other", QUANTPERF_CONSTRAINTS="other.txt")
    assert cmd.split()[-2:] == ["-c", "other.txt"], cmd
    (cmd,) = _gpu_job_install(tmp_path / "none", QUANTPERF_CONSTRAINTS="none")
    assert "-c" not in cmd.split(), cmd


def test_every_gpu_workflow_installs_from_the_lock():
    seen = 0
    for path in WORKFLOWS:
        for name, job in _workflow(path.name)["jobs"].items():
            if "self-hosted" not in _runs_on(job):
                continue
            seen += 1
            where = f"{path.name}:{name}"
            text = _run_text(job)
            installs = [line for line in text.splitlines() if re.search(r"pip install\b.*-e\s", line)]
            via_script = "scripts/gpu-job.sh" in text
            assert installs or via_script, f"{where} runs on a GPU runner but installs nothing"
            for line in installs:
                assert "-c constraints-gpu.txt" in line, f"{where} installs without the lock: {line.strip()}"
            for step in job["steps"]:
                if "scripts/gpu-job.sh" in step.get("run", ""):
                    assert "QUANTPERF_CONSTRAINTS" not in (step.get("env") or {}), f"{where} swaps the lock"
                    if "QUANTPERF_SKIP_INSTALL" in (step.get("env") or {}):
                        # a later step of a job whose earlier step installed through the script
                        assert "scripts/gpu-job.sh" in text.split(step["run"])[0], f"{where} never installs"
    assert seen >= 4  # gpu, ab, upgrade, canary


# -- (3) done when: one changed pin is environment A's only difference ----------------------------

def _spec_step():
    job = _workflow("ab.yml")["jobs"]["measure"]
    (step,) = [s for s in job["steps"] if "changed-pins" in s.get("run", "")]
    return step


def _environment_a(tmp_path, base_lock: str, head_lock: str) -> list:
    """Run the ab workflow's own `quantperf changed-pins` line, as written, in a checkout whose
    constraints-gpu.txt is the pull request's (head) and whose base lock is where the step's
    `git show` writes it. Returns environment A's spec file, line by line."""
    run = _spec_step()["run"]
    (show,) = [line.strip() for line in run.splitlines() if line.strip().startswith("git show")]
    base_file = re.search(r'constraints-gpu\.txt"\s*>\s*(\S+)', show).group(1)
    (line,) = [line.strip() for line in run.splitlines() if "quantperf changed-pins" in line]
    argv = shlex.split(line.split(">")[0])
    assert argv[:2] == ["quantperf", "changed-pins"] and len(argv) == 4, line
    # base argument = the pull request's lock, head argument = the base's: what comes out is the
    # base's version of every pin the pull request changed.
    assert argv[2] == "constraints-gpu.txt" and argv[3] == base_file, line
    out_file = line.split(">")[1].strip()
    work = tmp_path / "checkout"
    (work / Path(base_file).parent).mkdir(parents=True, exist_ok=True)
    (work / Path(out_file).parent).mkdir(parents=True, exist_ok=True)
    (work / "constraints-gpu.txt").write_text(head_lock)
    (work / base_file).write_text(base_lock)
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "quantperf").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m quantperf "$@"\n')
    (shim / "quantperf").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    out = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return (work / out_file).read_text().split()


def test_a_pull_request_changing_one_pin_gives_exactly_that_pin_as_environment_a(tmp_path):
    if not shutil.which("bash"):
        pytest.skip("needs bash")
    base = LOCK.read_text()
    assert "\nbitsandbytes==0.50.2\n" in base, "the test bumps bitsandbytes 0.50.2 -> 0.49.2"
    head = base.replace("\nbitsandbytes==0.50.2\n", "\nbitsandbytes==0.49.2\n")
    assert _environment_a(tmp_path / "one", base, head) == ["bitsandbytes==0.50.2"]
    # Only a comment changed: nothing to compare.
    assert _environment_a(tmp_path / "none", base, "# a new comment\n" + base) == []
    # The step says so and the A/B step is skipped; otherwise it passes the spec to the suite.
    job = _workflow("ab.yml")["jobs"]["measure"]
    spec = _spec_step()
    assert "any=false" in spec["run"] and "any=true" in spec["run"]
    (ab,) = [s for s in job["steps"] if "--qp-against" in s.get("run", "")]
    assert ab["if"] == f"steps.{spec['id']}.outputs.any == 'true'"
    assert re.search(r'--qp-against "\$\{?A_SPEC', ab["run"]) and "a-spec.txt" in ab["run"]
    assert "scripts/gpu-job.sh" in ab["run"]  # which writes --qp-report DIR/report and exits as pytest does
    assert "pull_request" in _workflow("ab.yml")["on"]
    assert "constraints-gpu.txt" in _workflow("ab.yml")["on"]["pull_request"]["paths"]


# -- (4) the A/B workflow's guards ---------------------------------------------------------------

def _writes(permissions) -> list:
    if permissions in ("write-all",):
        return ["write-all"]
    if not isinstance(permissions, dict):
        return []
    return [k for k, v in permissions.items() if v == "write"]


def test_ab_workflow_refuses_forks_cancels_superseded_runs_and_writes_only_to_comment():
    wf = _workflow("ab.yml")
    assert wf["permissions"] == {"contents": "read"}
    assert wf["concurrency"] == {"group": "ab-${{ github.event.pull_request.number }}", "cancel-in-progress": True}
    commenters = []
    for name, job in wf["jobs"].items():
        assert FORK_GUARD in job.get("if", ""), f"ab.yml:{name} does not refuse forks"
        comments = any("sticky-pull-request-comment" in u for u in _uses(job)) or "gh api" in _run_text(job)
        if comments:
            commenters.append(name)
            assert job["permissions"].get("pull-requests") == "write", f"ab.yml:{name} comments without the permission"
            assert "self-hosted" not in _runs_on(job)
            assert not any("actions/checkout" in u for u in _uses(job)), f"ab.yml:{name} runs the pull request's code"
            assert _writes(job["permissions"]) == ["pull-requests"]
        else:
            assert "permissions" in job and not _writes(job["permissions"]), f"ab.yml:{name} may write"
    assert commenters == ["comment"]
    gpu_jobs = [job for job in wf["jobs"].values() if "self-hosted" in _runs_on(job)]
    assert gpu_jobs and all(not _writes(job["permissions"]) for job in gpu_jobs)
    # The comment is posted also when the GPU job failed (a regression is what it must report).
    assert "always()" in wf["jobs"]["comment"]["if"]
    # The full report is an artifact with a retention set.
    uploads = [s for s in wf["jobs"]["measure"]["steps"] if "upload-artifact" in s.get("uses", "")]
    assert uploads and all(isinstance(s["with"].get("retention-days"), int) for s in uploads)
    assert any(s["with"]["name"] == "quantperf-ab-report" for s in uploads)


def test_no_pull_request_from_a_fork_reaches_a_self_hosted_runner():
    for path in WORKFLOWS:
        wf = _workflow(path.name)
        triggers = wf["on"] if isinstance(wf["on"], (dict, list)) else [wf["on"]]
        if not any(t in triggers for t in ("pull_request", "pull_request_target")):
            continue
        for name, job in wf["jobs"].items():
            if "self-hosted" in _runs_on(job):
                assert FORK_GUARD in job.get("if", ""), f"{path.name}:{name} lets a fork's pull request onto the runner"


def test_lock_pull_requests_belong_to_the_ab_workflow():
    on_gpu = _workflow("gpu.yml")["on"]
    assert "schedule" in on_gpu  # the nightly stored-baseline job stays
    assert not any("constraints" in p for p in on_gpu.get("pull_request", {}).get("paths", []))
    on_upgrade = _workflow("upgrade.yml")["on"]
    assert "workflow_dispatch" in on_upgrade and "pull_request" not in on_upgrade


# -- (5) comments and summaries fit GitHub's caps ------------------------------------------------

def _trim(text: str, limit: int, *note) -> str:
    out = subprocess.run([sys.executable, str(TRIM), str(limit), *(("--note", note[0]) if note else ())],
                         input=text.encode(), capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode("utf-8")  # never a split character


def test_trim_keeps_short_input_and_cuts_long_input_under_the_limit():
    short = "# report\n\n| a | b |\n|---|---|\n| é | 数 |\n"
    assert _trim(short, 65000) == short
    assert _trim(short, len(short.encode())) == short
    row = "| config | decode tok/s | é 数 |\n"
    table = row * 100 + "```\n" + "log line\n" * 20000 + "```\n" + row * 5000
    # cut in the first table, inside the fence, after it, and not at all
    for limit in (2000, 65000, 200000, 1000000):
        out = _trim(table, limit, "The full report is in the artifact quantperf-ab-report.")
        if len(table.encode()) <= limit:
            assert out == table
            continue
        assert len(out.encode()) <= limit
        assert "**Trimmed**" in out and "quantperf-ab-report" in out
        kept = out.split("\n\n---\n**Trimmed**")[0]
        assert table.startswith(kept.removesuffix("```\n")), "cut inside a line"
        assert kept.count("```") % 2 == 0, "an open code fence"


def test_workflows_trim_comments_and_summaries():
    ab = (ROOT / ".github" / "workflows" / "ab.yml").read_text()
    assert re.search(r"trim-markdown\.py 65000 .*> quantperf-ab/comment\.md", ab)
    for path in WORKFLOWS:
        for line in re.sub(r"\\\n\s*", " ", path.read_text()).splitlines():  # continued lines joined
            if "GITHUB_STEP_SUMMARY" in line and ">>" in line:
                assert "trim-markdown.py 1000000" in line or "echo" in line, f"{path.name}: untrimmed summary: {line}"
    comment_job = _workflow("ab.yml")["jobs"]["comment"]
    sticky = [s for s in comment_job["steps"] if "sticky-pull-request-comment" in s.get("uses", "")]
    assert sticky and sticky[0]["with"]["header"] == "quantperf-ab"


# -- (6) Renovate proposes bumps of the lock -----------------------------------------------------

def _renovate_pattern_matches(pattern: str, path: str) -> bool:
    assert pattern.startswith("/") and pattern.endswith("/"), pattern  # a regex, not a glob
    return re.search(pattern[1:-1], path) is not None


def test_renovate_config_is_valid_and_bumps_the_lock_one_library_at_a_time():
    out = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.renovate", str(RENOVATE)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    config = json.loads(RENOVATE.read_text())
    assert {"pip_requirements", "github-actions"} <= set(config["enabledManagers"])
    patterns = config["pip_requirements"]["managerFilePatterns"]
    assert any(_renovate_pattern_matches(p, LOCK.name) for p in patterns)
    assert not any(_renovate_pattern_matches(p, "pyproject.toml") for p in patterns)
    assert config["schedule"] and isinstance(config["prConcurrentLimit"], int) and config["prConcurrentLimit"] > 0
    for rule in config.get("packageRules", []):
        if "pip_requirements" in rule.get("matchManagers", []) or not rule.get("matchManagers"):
            assert "groupName" not in rule, "the lock's bumps must stay one library per pull request"
    assert config.get("groupName") is None


# -- (7) the canary: each library's newest release against the lock, one issue ---------------------

CANARY = "canary.yml"
QUANTPERF_LINE = re.compile(r"(?:^|\s)(?:python3? -m )?quantperf ([a-z][a-z-]+\b.*)")
SAMPLE_ENV = {"LIBRARY": "torch", "NEWEST": "2.13.0", "MODES": "kernel graph eager",
              "RUN_URL": "https://example.invalid/runs/1"}


def _cli_parser():
    """`quantperf`'s argument parser as main() builds it, to parse a workflow's command lines
    without running them; an abbreviated option is refused (a renamed option must not still match)."""
    import argparse

    from quantperf.cli import GROUPS

    ap = argparse.ArgumentParser(prog="quantperf")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for group in GROUPS:
        group.add_parser(sub)
    for parser in sub.choices.values():
        parser.allow_abbrev = False
    return ap


def _quantperf_commands(run: str) -> list[list[str]]:
    """The argv of every `quantperf ...` (or `python -m quantperf ...`) a run script executes, with
    the step's variables given sample values and redirections cut off."""
    from string import Template

    found = []
    for line in re.sub(r"\\\n\s*", " ", run).splitlines():
        if line.strip().startswith(("echo", "printf", "#")):
            continue
        m = QUANTPERF_LINE.search(line)
        if m:
            rest = re.split(r"\s(?:\|\|?|2?>>?|<|2>&1)\s", " " + m.group(1) + " ")[0]
            found.append(shlex.split(Template(rest).safe_substitute(SAMPLE_ENV)))
    return found


def test_every_quantperf_command_a_workflow_runs_exists_with_its_options():
    parser, seen = _cli_parser(), set()
    for path in WORKFLOWS:
        for name, job in _workflow(path.name)["jobs"].items():
            for argv in _quantperf_commands(_run_text(job)):
                try:
                    parser.parse_args(argv)
                except SystemExit:
                    pytest.fail(f"{path.name}:{name}: `quantperf {shlex.join(argv)}` does not parse")
                seen.add((path.name, argv[0]))
    assert {(CANARY, "newest"), (CANARY, "upgrade-check"), (CANARY, "canary-report"), ("ab.yml", "changed-pins"),
            ("upgrade.yml", "upgrade-check"), (GPU, "history")} <= seen


def test_canary_runs_weekly_over_the_five_libraries_one_at_a_time():
    from quantperf.report.canary import LIBRARIES

    wf = _workflow(CANARY)
    assert "schedule" in wf["on"] and "workflow_dispatch" in wf["on"] and "pull_request" not in wf["on"]
    assert wf["concurrency"]["cancel-in-progress"] is False  # a later run waits, never kills a measurement
    check = wf["jobs"]["check"]
    assert _runs_on(check) == ["self-hosted", "gpu"]
    assert check["strategy"]["fail-fast"] is False and check["strategy"]["max-parallel"] == 1
    assert check["strategy"]["matrix"] == {"library": list(MEASURED)}
    assert tuple(LIBRARIES) == MEASURED  # canary-report's default rows are the matrix
    assert set(MEASURED) <= set(_pins(LOCK.read_text()))
    # upgrade-check compares the newest release only when there is one, with every mode and quality
    (step,) = [s for s in check["steps"] if "quantperf upgrade-check" in s.get("run", "")]
    assert step["if"] == "steps.newest.outputs.newer == 'true'"
    (argv,) = _quantperf_commands(step["run"])
    assert argv[:3] == ["upgrade-check", "torch==2.13.0", "--allow-changes"]
    assert {"--device", "cuda", "--quality", "kernel", "graph", "eager", "--json", "--markdown"} <= set(argv)
    # its exit status is recorded before the job fails with it; the artifact is uploaded anyway
    assert "PIPESTATUS[0]" in step["run"] and 'exit "$code"' in step["run"]
    (upload,) = [s for s in check["steps"] if "upload-artifact" in s.get("uses", "")]
    assert upload["if"] == "always()" and upload["with"]["name"] == "canary-${{ matrix.library }}"
    assert isinstance(upload["with"]["retention-days"], int)


def test_canary_only_the_issue_job_writes_and_it_runs_no_project_code():
    wf = _workflow(CANARY)
    assert wf["permissions"] == {"contents": "read"}
    writers = []
    for name, job in wf["jobs"].items():
        assert "permissions" in job, f"{CANARY}:{name} inherits its permissions"
        if _writes(job["permissions"]):
            writers.append(name)
    assert writers == ["issue"]
    issue = wf["jobs"]["issue"]
    assert _writes(issue["permissions"]) == ["issues"] and set(issue["permissions"]) == {"issues"}
    assert "self-hosted" not in _runs_on(issue)
    assert not any("actions/checkout" in u for u in _uses(issue)), "the issue job checks out code"
    text = _run_text(issue)
    assert "gh issue list --label \"$LABEL\"" in text and "gh issue edit" in text and "gh issue create" in text
    assert issue["env"]["LABEL"] == "quantperf-canary"
    # the issue is written also when libraries failed: a regression is what it must report
    assert wf["jobs"]["report"]["needs"] == "check" and wf["jobs"]["report"]["if"] == "always()"
    assert issue["needs"] == "report" and issue["if"].startswith("always()")


def test_every_action_is_pinned_by_commit_with_its_version():
    for path in WORKFLOWS:
        for line in path.read_text().splitlines():
            if re.match(r"\s*(-\s+)?uses:", line):
                assert re.search(r"uses: [\w.-]+/[\w./-]+@[0-9a-f]{40}\s+#\s+v\d+(\.\d+)*\s*$", line), \
                    f"{path.name}: not pinned by commit with a version comment: {line.strip()}"


def test_canary_report_reads_the_folders_the_libraries_upload():
    wf = _workflow(CANARY)
    report = wf["jobs"]["report"]
    (download,) = [s for s in report["steps"] if "download-artifact" in s.get("uses", "")]
    assert download["with"]["pattern"] == "canary-*" and download.get("continue-on-error") is True
    (argv,) = _quantperf_commands(_run_text(report))
    assert argv[:2] == ["canary-report", download["with"]["path"]]
    # the issue's markdown travels to the issue job under a name the library pattern never matches
    import fnmatch

    (upload,) = [s for s in report["steps"] if "upload-artifact" in s.get("uses", "")]
    (fetch,) = [s for s in wf["jobs"]["issue"]["steps"] if "download-artifact" in s.get("uses", "")]
    assert fetch["with"]["name"] == upload["with"]["name"]
    assert not fnmatch.fnmatch(upload["with"]["name"], download["with"]["pattern"])
    # the report job installs numpy and pydantic only (tests/test_canary.py: they are enough)
    installs = [line.strip() for line in _run_text(report).splitlines() if "pip install" in line]
    assert installs == ["python -m pip install -c constraints-gpu.txt numpy pydantic"]
    assert "self-hosted" not in _runs_on(report) and not _writes(report["permissions"])
    # the issue body fits GitHub's 65,536-character cap
    assert re.search(r"trim-markdown\.py 65000 .*> canary-issue/issue\.md", _run_text(report))


def _fake_checkout(tmp_path, quantperf_script: str) -> Path:
    """A checkout with the lock and a .venv-gpu whose activate puts a `quantperf` on PATH."""
    work = tmp_path / "checkout"
    shim = work / ".venv-gpu" / "bin"
    shim.mkdir(parents=True)
    shutil.copy(LOCK, work / "constraints-gpu.txt")
    (shim / "activate").write_text(f'PATH="{shim}:$PATH"\n')
    (shim / "quantperf").write_text("#!/bin/sh\n" + quantperf_script)
    (shim / "quantperf").chmod(0o755)
    return work


def _run_step(step, work, **env):
    full = {**os.environ, **env,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    return subprocess.run(["bash", "-e", "-c", step["run"]], cwd=work, env=full, capture_output=True, text=True,
                          timeout=120)


def test_canary_steps_find_the_newest_release_through_the_runners_pip_settings(tmp_path):
    """The workflow's own newest step, as written, with pip told by PIP_* variables (as a runner's
    configuration would) to look in a folder holding the lock's torchao and a newer one."""
    import zipfile

    if not shutil.which("bash"):
        pytest.skip("needs bash")
    job = _workflow(CANARY)["jobs"]["check"]
    (step,) = [s for s in job["steps"] if "quantperf newest" in s.get("run", "")]
    assert step["env"] == {"LIBRARY": "${{ matrix.library }}"} and step["id"] == "newest"
    pinned = _pins(LOCK.read_text())["torchao"][1]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for version in (pinned, "99.0", "100.0rc1"):
        with zipfile.ZipFile(wheels / f"torchao-{version}-py3-none-any.whl", "w") as z:
            info = f"torchao-{version}.dist-info"
            z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torchao\nVersion: {version}\n")
            z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
            z.writestr(f"{info}/RECORD", "")
    work = _fake_checkout(tmp_path, f'exec "{sys.executable}" -m quantperf "$@"\n')
    output = tmp_path / "github-output"
    out = _run_step(step, work, LIBRARY="torchao", GITHUB_OUTPUT=str(output), PIP_NO_INDEX="1",
                    PIP_FIND_LINKS=str(wheels))
    assert out.returncode == 0, out.stdout + out.stderr
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert outputs == {"library": "torchao", "pinned": pinned, "newest": "99.0", "newer": "true"}
    used = set(re.findall(r"steps\.newest\.outputs\.(\w+)", (ROOT / ".github/workflows" / CANARY).read_text()))
    assert used <= set(outputs)

    # the upgrade-check step records upgrade-check's exit status, then fails with it
    (check,) = [s for s in job["steps"] if "quantperf upgrade-check" in s.get("run", "")]
    work = _fake_checkout(tmp_path / "b", 'echo "quantperf: environment B: torchao==99.0: no wheel" >&2\nexit 2\n')
    (work / "canary").mkdir()
    shutil.copy(tmp_path / "checkout" / "canary" / "canary.txt", work / "canary" / "canary.txt")
    out = _run_step(check, work, LIBRARY="torchao", NEWEST="99.0")
    assert out.returncode == 2, out.stdout + out.stderr
    assert (work / "canary" / "canary.txt").read_text().endswith("newer=true\nexit_code=2\n")
    # what the issue then says about it, from the artifact canary-torchao
    from quantperf.report.canary import read_library

    shutil.copytree(work / "canary", tmp_path / "reports" / "canary-torchao")
    row = read_library(tmp_path / "reports", "torchao")
    assert row.problem == ("no `canary-torchao/report.json` (upgrade-check exit 2; `quantperf: environment B: "
                           "torchao==99.0: no wheel`)")


# -- (8) the nightly keeps the results store on a branch of its own -----------------------------------

GPU = "gpu.yml"
HISTORY_ALLOWED = {"numpy", "scipy", "pydantic", "pydantic_core", "annotated_types", "typing_extensions",
                   "typing_inspection", "quantperf", "_distutils_hack", "__editable___quantperf_0_1_0_finder"}


def _store_checkout(job) -> dict:
    (step,) = [s for s in job["steps"] if "actions/checkout" in s.get("uses", "") and "ref" in s.get("with", {})]
    return step


def test_only_the_history_job_writes_and_only_for_mains_runs():
    wf = _workflow(GPU)
    assert wf["permissions"] == {"contents": "read"}
    writers = [name for name, job in wf["jobs"].items() if _writes(job.get("permissions"))]
    assert writers == ["history"]
    job = wf["jobs"]["history"]
    assert job["permissions"] == {"contents": "write"}
    assert "self-hosted" not in _runs_on(job)
    # pull requests never push: only runs of main (nightly, by hand) become the record
    cond = job["if"]
    assert "github.event_name != 'pull_request'" in cond and "github.ref == 'refs/heads/main'" in cond
    assert "cancelled()" in cond and job["needs"] == "regression"  # also after a regression, not when cancelled
    # every checkout keeps no credentials: the push gets the token through one step's environment
    for name, each in wf["jobs"].items():
        for step in each["steps"]:
            if "actions/checkout" in step.get("uses", ""):
                assert step["with"]["persist-credentials"] is False, f"{GPU}:{name} keeps credentials"
    (push,) = [s for s in job["steps"] if "--push" in s.get("run", "")]
    assert set(push["env"]) == {"GH_TOKEN", "SERVER_URL"} and "::add-mask::" in push["run"]
    assert "GH_TOKEN" not in json.dumps([s.get("env", {}) for s in job["steps"] if s is not push])
    # the one push is `quantperf history add --push`'s, never forced (gitstore.py); no other git write
    assert "--force" not in _run_text(job) and "git push" not in _run_text(job)


def test_the_regression_job_derives_from_the_store_branch_and_never_writes_it():
    wf = _workflow(GPU)
    regression, history = wf["jobs"]["regression"], wf["jobs"]["history"]
    store = _store_checkout(regression)
    branch = store["with"]["ref"]
    assert branch not in ("main", "master") and branch == history["env"]["STORE_BRANCH"] == "quantperf-history"
    assert store.get("continue-on-error") is True  # the branch does not exist before the first sitting
    (suite,) = [s for s in regression["steps"] if "scripts/gpu-job.sh" in s.get("run", "")]
    argv = shlex.split(suite["run"])
    assert argv[argv.index("--qp-history") + 1] == store["with"]["path"]
    assert "--qp-history-push" not in argv and "--qp-history-branch" not in argv  # a directory copy, never pushed
    # the history job adds to that branch exactly the artifacts the regression job uploads
    (upload,) = [s for s in regression["steps"] if "upload-artifact" in s.get("uses", "")]
    (download,) = [s for s in history["steps"] if "download-artifact" in s.get("uses", "")]
    import fnmatch

    assert fnmatch.fnmatch(upload["with"]["name"].replace("${{ matrix.profile }}", "t4"), download["with"]["pattern"])
    assert upload["with"]["path"].rstrip("/") == suite["env"]["QUANTPERF_RESULTS_DIR"]
    adds = [a for a in _quantperf_commands(_run_text(history)) if a[:2] == ["history", "add"]]
    assert adds and all(a[a.index("--branch") + 1] == "$STORE_BRANCH" and a[a.index("--push") + 1] == "origin"
                        for a in adds)
    reports = [a for a in _quantperf_commands(_run_text(history)) if a[:2] == ["history", "report"]]
    assert reports and all(a[a.index("--branch") + 1] == "$STORE_BRANCH" for a in reports)
    installs = [line.strip() for line in _run_text(history).splitlines() if "pip install" in line]
    assert installs == ["python -m pip install -c constraints-gpu.txt numpy scipy pydantic"]


def test_gpu_job_passes_the_store_options_to_pytest(tmp_path):
    if not shutil.which("bash"):
        pytest.skip("needs bash")
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(GPU_JOB, repo / "scripts" / "gpu-job.sh")
    log = _fake_python(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTPERF_")}
    env.update(PATH=f"{tmp_path / 'fakebin'}{os.pathsep}{os.environ['PATH']}", QUANTPERF_SKIP_INSTALL="1",
               QUANTPERF_HISTORY="env-store")
    out = subprocess.run(["bash", str(repo / "scripts" / "gpu-job.sh"), "--qp-history", "quantperf-store"], cwd=repo,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    (pytest_line,) = [line for line in log.read_text().splitlines() if "-m pytest" in line]
    assert pytest_line.endswith("--qp-history quantperf-store"), pytest_line
    assert "QUANTPERF_HISTORY" in GPU_JOB.read_text()  # the environment's store reaches the plugin unchanged


def _history_guard(tmp_path) -> Path:
    """A `python` on PATH that runs `python -m quantperf ...` with only what the history job installs."""
    guard = tmp_path / "guard.py"
    guard.write_text("import sys\n"
                     f"allowed = {sorted(HISTORY_ALLOWED)!r}\n"
                     "class Deny:\n"
                     "    def find_spec(self, name, path=None, target=None):\n"
                     "        top = name.split('.')[0]\n"
                     "        if (top not in sys.stdlib_module_names and top not in allowed\n"
                     "                and not top.startswith('_sysconfigdata')):\n"
                     "            raise ImportError(f'not installed in the history job: {name}')\n"
                     "sys.meta_path.insert(0, Deny())\n"
                     "from quantperf.cli import main\n"
                     "sys.exit(main(sys.argv[1:]))\n")
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").write_text('#!/bin/sh\n[ "$1" = -m ] && [ "$2" = quantperf ] || exit 99\nshift 2\n'
                                 f'exec "{sys.executable}" "{guard}" "$@"\n')
    (shim / "python").chmod(0o755)
    return shim


def _git(*args, cwd=None):
    ident = ["-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "init.defaultBranch=main"]
    out = subprocess.run(["git", *ident, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip()


def _profile_artifact(folder: Path, run_id: str, summary: bool) -> None:
    from test_history_store import _results_dicts

    from quantperf.results import ResultLog, RunResult
    from quantperf.summary import ConfigOutcome, SessionSummary

    folder.mkdir(parents=True)
    log = ResultLog(folder / "results.jsonl")
    for d in _results_dicts():
        d["environment"]["run"].update(run_id=run_id, started_at=f"2026-11-0{run_id[-1]}T02:00:00+00:00")
        log.append(RunResult.from_dict(d))
    if summary:
        cid = RunResult.from_dict(_results_dicts()[0]).spec.id
        SessionSummary(profiles={}, configs=[ConfigOutcome(key=f"{cid}:speed", config_id=cid, kinds=["speed"],
                                                           status="regressed")]).write(folder / "summary.json")


def test_the_history_steps_as_written_push_each_profiles_sitting_to_the_store_branch(tmp_path):
    """The history job's own steps, run in a checkout whose origin is a local bare repository:
    the first run starts the branch, the second adds to it (fetched first, never forced), main is
    untouched, a profile without results is named, and only numpy, scipy and pydantic are imported."""
    if not (shutil.which("bash") and shutil.which("git")):
        pytest.skip("needs bash and git")
    job = _workflow(GPU)["jobs"]["history"]
    (add,) = [s for s in job["steps"] if "history add" in s.get("run", "")]
    (report,) = [s for s in job["steps"] if "history report" in s.get("run", "")]
    origin, work = tmp_path / "origin.git", tmp_path / "work"
    _git("init", "-q", "--bare", str(origin))
    _git("init", "-q", str(work))
    (work / "README.md").write_text("code\n")
    _git("add", "README.md", cwd=work)
    _git("commit", "-q", "-m", "code", cwd=work)
    _git("remote", "add", "origin", str(origin), cwd=work)
    _git("push", "-q", "origin", "main", cwd=work)
    main_before = _git("rev-parse", "main", cwd=origin)
    shim = _history_guard(tmp_path)
    summary_md = tmp_path / "summary.md"
    env = {**job["env"], "GH_TOKEN": "not-a-token", "SERVER_URL": "https://example.invalid", "GITHUB_REF_NAME": "main",
           "GITHUB_STEP_SUMMARY": str(summary_md), "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "QUANTPERF_"))}, **env}

    def run(step):
        return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", step["run"]], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)

    inbox = work / "quantperf-history-in"
    _profile_artifact(inbox / "quantperf-results-t4", "run001", summary=True)
    (inbox / "quantperf-results-h100").mkdir()  # the suite never ran there
    out = run(add)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "No branch quantperf-history on origin yet" in out.stdout
    assert "quantperf-results-h100: no results.jsonl" in summary_md.read_text()
    assert "quantperf-results-t4: its sitting is stored on quantperf-history and pushed" in summary_md.read_text()
    shutil.rmtree(inbox)
    _profile_artifact(inbox / "quantperf-results-h200", "run002", summary=False)
    _git("branch", "-D", "quantperf-history", cwd=work)  # a fresh runner: the branch comes from origin
    out = run(add)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "No branch" not in out.stdout and "pushed quantperf-history to origin" in out.stdout
    assert "extraheader" not in (work / ".git" / "config").read_text()  # the token stays in the step's env
    assert _git("rev-parse", "main", cwd=origin) == main_before
    files = _git("ls-tree", "-r", "--name-only", "quantperf-history", cwd=origin).split()
    assert len(files) == 2 and all(f.startswith("cpu-test/a1b2c3d4e5/") for f in files), files
    stored = [json.loads(_git("show", f"quantperf-history:{f}", cwd=origin)) for f in sorted(files)]
    assert [s["run_id"] for s in stored] == ["run001", "run002"]
    assert {s["source_branch"] for s in stored} == {"main"}
    assert any(c.get("outcome") == "regressed" for c in stored[0]["configs"].values())  # its summary.json
    # a results file that cannot be stored fails the step, naming the profile; the others are still stored
    _profile_artifact(inbox / "quantperf-results-t4", "run003", summary=False)
    (inbox / "quantperf-results-h100").mkdir()
    (inbox / "quantperf-results-h100" / "results.jsonl").write_text("{}\n")
    out = run(add)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "quantperf-results-h100: not stored" in summary_md.read_text()
    assert len(_git("ls-tree", "-r", "--name-only", "quantperf-history", cwd=origin).split()) == 3
    out = run(report)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "run002" in (work / "quantperf-history-report" / "history.html").read_text()
