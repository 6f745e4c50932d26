"""scripts/cuda_stages.sh: the pipeline's stage commands on a machine without Snakemake, DVC,
MLflow or pooch (a GPU node's bare image), run here on the CPU with those packages hidden."""
import json
import shutil
import sys
import tarfile

import yaml

from conftest import ROOT, make_project, run, tiny_params

HIDDEN = ("mlflow", "snakemake", "dvc", "pooch")


def test_stages_run_without_the_workflow_packages_and_pack_their_costs(tmp_path):
    params = tiny_params(rbm={"train": {"epochs": 2, "batch_size": 50}, "model": {"n_hidden": 8}},
                         nade={"train": {"epochs": 2, "batch_size": 50}, "model": {}})
    params["runs"] = [{"dataset": "bars_stripes", "model": m} for m in ("rbm", "nade")]
    path = make_project(tmp_path / "proj", params)
    (path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/cuda_stages.sh", path / "scripts")
    (path / "device.yaml").write_text(yaml.safe_dump({"device": "cpu"}))
    stubs = tmp_path / "stubs"
    for name in HIDDEN:      # importing any of them fails, as on a machine without them
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('{name} is not here')\n")
    out = tmp_path / "out"
    p = run(["bash", "scripts/cuda_stages.sh", "params.yaml", "device.yaml"], path,
            timeout=300, env={"PYTHONPATH": str(stubs), "PYTHON": sys.executable,
                              "OUT": str(out), "GM_STAGE_JOBS": "2"})
    assert "cuda_stages: PASSED" in p.stdout
    summary = (out / "summary.txt").read_text()
    for stage in ("fetch", "prepare", "classifier"):
        assert f"{stage} --dataset bars_stripes : exit 0" in summary
    for model in ("rbm", "nade"):
        for stage in ("train", "evaluate"):
            assert f"{stage} --dataset bars_stripes --model {model} --seed 0 : exit 0" in summary
    with tarfile.open(out / "stages.tar.gz") as tar:
        names = set(tar.getnames())
        for model in ("rbm", "nade"):
            for file in ("train.json", "eval.json"):
                member = f"results/bars_stripes/{model}/seed0/{file}"
                assert member in names
                record = json.load(tar.extractfile(member))
                assert {"wall_seconds", "cpu_seconds", "peak_rss_mb"} <= set(record["cost"])
        assert "logs/train/bars_stripes-rbm-seed0.log" in names


def test_bad_params_stop_the_script_before_any_stage_with_one_line(tmp_path):
    params = tiny_params()
    path = make_project(tmp_path / "proj", params)
    (path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/cuda_stages.sh", path / "scripts")
    (path / "bad.yaml").write_text(yaml.safe_dump({"models": {"rbm": {"model": {"n_hidden": 0}}}}))
    p = run(["bash", "scripts/cuda_stages.sh", "params.yaml", "bad.yaml"], path, timeout=300,
            check=False, env={"PYTHON": sys.executable, "OUT": str(tmp_path / "out")})
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "models.rbm.model.n_hidden" in p.stderr and not (path / "results").exists()


def test_cuda_asked_without_a_cuda_device_stops_before_any_stage(tmp_path):
    """The stages fall back to the CPU (with a warning) when CUDA is missing; here that would
    record CPU costs as GPU ones, so the script refuses with one line before any stage."""
    path = make_project(tmp_path / "proj", tiny_params())
    (path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/cuda_stages.sh", path / "scripts")
    (path / "device.yaml").write_text(yaml.safe_dump({"device": "cuda"}))
    p = run(["bash", "scripts/cuda_stages.sh", "params.yaml", "device.yaml"], path, timeout=300,
            check=False, env={"PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
                              "CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "torch sees no CUDA device" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (path / "results").exists()
