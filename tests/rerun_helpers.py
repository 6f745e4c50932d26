"""Helpers of the rerun tests (tests/test_pipeline.py, tests/test_dvc_reruns.py): a scratch
DVC repository, source edits, and what a Snakemake dry run or a `dvc repro` says it ran."""
import re
import subprocess

from conftest import run, tiny_params


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def rbm_and_fvsbn_project(project):
    """A scratch DVC repository (git + dvc init) running rbm and fvsbn on bars_stripes."""
    p = tiny_params()
    p["models"]["fvsbn"] = {"train": {"epochs": 2, "batch_size": 50}, "model": {}}
    p["runs"].append({"dataset": "bars_stripes", "model": "fvsbn"})
    path = project(p)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    run(["dvc", "init", "-q"], path)
    return path


def edit_source(path, file: str) -> None:
    """Change a source file of the scratch project (a comment: the code's meaning stays)."""
    with open(path / file, "a") as f:
        f.write("\n# edited by a test\n")


def model_stages(output: str) -> set[str]:
    """Stages DVC ran, without the code fingerprints (cheap; rerun on any code change)."""
    return {s for s in ran_stages(output) if not s.startswith("code_")}


def snakemake_plan(path) -> set[str]:
    """The rules a dry run would execute ("Nothing to be done" -> empty set)."""
    out = run(["snakemake", "--cores", "1", "-n"], path).stdout
    return set(re.findall(r"^rule (\w+):", out, re.M)) - {"all"}


def snakemake_jobs(path) -> set[tuple[str, str]]:
    """(rule, model wildcard or "") of each job a dry run would execute."""
    out = run(["snakemake", "--cores", "1", "-n"], path).stdout
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if rule and rule.group(1) != "all":
            model = re.search(r"wildcards:.*\bmodel=([\w]+)", block)
            jobs.add((rule.group(1), model.group(1) if model else ""))
    return jobs
