"""Snakefile and dvc.yaml declare the same stages: commands, inputs and outputs."""
import re
import subprocess
from pathlib import Path

import yaml

from conftest import run, tiny_params


def snakemake_jobs(path: Path, *targets: str) -> dict[str, dict]:
    """command -> {"inputs", "outputs"} from a forced dry run (of ``targets``, default all)."""
    out = run(["snakemake", "--cores", "1", "-n", "-p", "--forceall", *targets], path).stdout
    jobs = {}
    for block in out.split("\nrule ")[1:]:
        fields = dict(re.findall(r"^\s+(input|output): (.*)$", block, re.M))
        cmd = re.search(r"^Shell command: (.*)$", block, re.M)
        if cmd is None or cmd.group(1).strip() == "None":   # the target rule `all`
            continue
        command = re.sub(r"\s+2> \S+$", "", cmd.group(1).strip())
        jobs[command] = {"inputs": set(filter(None, fields.get("input", "").split(", "))),
                         "outputs": set(fields["output"].split(", "))}
    return jobs


TUNE_DVC = "configs/studies/dvc.yaml"   # the tune stages: apart, so `dvc repro` never tunes


def dvc_stages(path: Path, dvcfile: str = "dvc.yaml") -> dict[str, dict]:
    """command -> {"inputs", "outputs"} of the stages of ``dvcfile``, paths from the root."""
    if not (path / ".dvc").exists():
        subprocess.run(["git", "init", "-q"], cwd=path, check=True)
        run(["dvc", "init", "-q"], path)
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo
    stages = {}
    with Repo(str(path)) as repo:
        for st in repo.index.stages:
            if not st.cmd or Path(st.dvcfile.path).resolve() != (path / dvcfile).resolve():
                continue
            stages[st.cmd] = {
                "inputs": {_rel(d, path) for d in st.deps if not isinstance(d, ParamsDependency)},
                "outputs": {_rel(o, path) for o in st.outs}}
    return stages


def _rel(item, root: Path) -> str:
    """A dependency's or output's path from the repository root (a stage's wdir may differ)."""
    return Path(item.fs_path).resolve().relative_to(root.resolve()).as_posix()


def is_code_stage(cmd: str) -> bool:
    return cmd.startswith("python -m pipeline.code ")


def covered(path: str, deps: set[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def test_snakefile_and_dvc_yaml_declare_the_same_dag(project):
    p = tiny_params()
    p["datasets"]["digits"] = {}
    p["seeds"] = [0, 3]
    p["runs"].append({"dataset": "digits", "model": "rbm"})
    path = project(p)
    smk, dvc = snakemake_jobs(path), dvc_stages(path)
    assert set(smk) == set(dvc), set(smk) ^ set(dvc)
    # fetch/prepare/classifier, train/evaluate, report; code of train/evaluate per model,
    # of prepare per dataset, of the classifier and of the report
    assert len(smk) == 2 * 3 + 2 * 2 * 2 + 1 + 2 + 2 + 1 + 1
    for cmd in smk:
        assert smk[cmd]["outputs"] == dvc[cmd]["outputs"], cmd
        if is_code_stage(cmd):   # Snakemake: the files the stage imports; DVC: gm/ and pipeline/
            assert smk[cmd]["inputs"] and all(i.endswith(".py") for i in smk[cmd]["inputs"]), cmd
            tuned = {"configs/tuned"} if "--stage train" in cmd else set()   # (tuned hashes)
            assert dvc[cmd]["inputs"] == {"gm", "pipeline"} | tuned, cmd
            dvc[cmd]["inputs"] -= tuned   # Snakemake reruns training on tuned values by params
        # DVC may depend on a directory holding Snakemake's individual inputs (results/)
        assert all(covered(i, dvc[cmd]["inputs"]) for i in smk[cmd]["inputs"]), cmd
        assert all(any(covered(i, {d}) for i in smk[cmd]["inputs"]) for d in dvc[cmd]["inputs"]), cmd


def test_committed_report_does_not_make_a_fresh_clone_look_done(project):
    """A fresh clone holds reports/ but no results/: `snakemake` must still train everything."""
    import shutil
    from conftest import ROOT
    path = project()
    shutil.copytree(ROOT / "reports", path / "reports")
    out = run(["snakemake", "--cores", "1", "-n"], path).stdout
    assert "Nothing to be done" not in out
    assert re.search(r"^rule train:", out, re.M) and re.search(r"^rule report:", out, re.M)


def test_tune_rules_and_dvc_tune_stages_declare_the_same_dag(project):
    """`snakemake tune` and configs/studies/dvc.yaml: the same workers and study steps; and
    neither default DAG holds a tune stage."""
    p = tiny_params()
    p["tuned"] = "configs/tuned"
    p["runs"].append({"dataset": "bars_stripes", "model": "fvsbn"})
    p["models"]["fvsbn"] = {"train": {"epochs": 2, "batch_size": 50}, "model": {}}
    path = project(p)
    (path / "configs" / "search.yaml").write_text(yaml.safe_dump({
        "runs": [{"dataset": "bars_stripes", "model": m} for m in ("rbm", "fvsbn")],
        "trials": 2, "workers": [0, 1], "trial_cpu_seconds": 1,
        "models": {"rbm": {"objective": "likelihood", "model": {"lr": [0.01, 0.1]}},
                   "fvsbn": {"objective": "likelihood", "train": {"epochs": [1, 3]}}}}))
    smk, dvc = snakemake_jobs(path, "tune"), dvc_stages(path, TUNE_DVC)
    upstream = {c for c in smk if "pipeline.tune" not in c}   # fetch, prepare, classifier:
    assert upstream and upstream <= set(dvc_stages(path))     # dvc.yaml's own stages
    smk = {c: v for c, v in smk.items() if c not in upstream}
    assert set(smk) == set(dvc), set(smk) ^ set(dvc)
    assert len(smk) == 2 * 2 + 2    # a worker job per (study, worker), a result step per study
    for cmd in smk:
        assert smk[cmd]["outputs"] == dvc[cmd]["outputs"], cmd
        assert all(covered(i, dvc[cmd]["inputs"]) for i in smk[cmd]["inputs"]), cmd
    assert not any("pipeline.tune" in c for c in snakemake_jobs(path)), "tuning in `all`"
    assert not any("pipeline.tune" in c for c in dvc_stages(path)), "tuning in dvc.yaml"
