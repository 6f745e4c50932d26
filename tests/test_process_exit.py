"""A stage run as a process (pipeline.common.process_main: its objects frozen out of the
garbage collector's reach, so exit skips collecting them) and as a call (tests and tools)."""
import gc

from conftest import make_project, run, tiny_params


def test_a_stage_process_exits_with_its_status_and_its_outputs_whole(tmp_path):
    proj = make_project(tmp_path / "p", tiny_params())
    for stage in ("fetch", "prepare"):
        r = run(["python", "-m", f"pipeline.{stage}", "--dataset", "bars_stripes"], proj)
        assert r.returncode == 0
    assert "prepared bars_stripes" in r.stderr                  # logging flushed at exit
    r = run(["python", "-c", "from gm.data import load_splits\n"
             "print(len(load_splits('data/processed/bars_stripes.npz').x['train']))"], proj)
    assert int(r.stdout) > 0
    r = run(["python", "-m", "pipeline.prepare", "--dataset", "mnist"], proj, check=False)
    assert r.returncode == 2 and r.stderr.strip().startswith("error:")
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_stage_called_in_process_leaves_garbage_collection_alone(tmp_path, monkeypatch):
    """Only process_main freezes: a caller's garbage must stay collectable."""
    from pipeline import fetch, prepare
    monkeypatch.chdir(make_project(tmp_path / "p", tiny_params()))
    frozen = gc.get_freeze_count()
    assert fetch.main(["--dataset", "bars_stripes"]) == 0
    assert prepare.main(["--dataset", "bars_stripes"]) == 0
    assert gc.get_freeze_count() == frozen
