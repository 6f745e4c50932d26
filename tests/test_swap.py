"""The report folder is written as a unit: a kill at any moment leaves a whole report."""
import os
import signal
import subprocess
import sys

from pathlib import Path

from pipeline import swap

WRITER = """
import sys, time
from pathlib import Path
from pipeline import swap
with swap.building(Path(sys.argv[1])) as out:
    (out / "report.md").write_text("new")
    print("building", flush=True)
    time.sleep(60)
"""


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def old_report(tmp_path) -> Path:
    target = tmp_path / "reports"
    (target / "figures").mkdir(parents=True)
    (target / "report.md").write_text("old")
    (target / "figures" / "a.png").write_bytes(b"png")
    return target


def test_sigkill_while_building_leaves_the_previous_report_whole(tmp_path):
    target = old_report(tmp_path)
    before = snapshot(target)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline().strip() == "building"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert snapshot(target) == before                      # untouched, nothing half-written
    with swap.building(target) as out:                     # the next build cleans up and swaps
        (out / "report.md").write_text("new")
    assert snapshot(target) == {"report.md": b"new"}       # stale figures gone with the old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]


def test_a_failed_build_changes_nothing(tmp_path):
    target = old_report(tmp_path)
    before = snapshot(target)
    try:
        with swap.building(target) as out:
            (out / "report.md").write_text("half")
            raise RuntimeError("report failed")
    except RuntimeError:
        pass
    assert snapshot(target) == before and not (tmp_path / "reports.building").exists()


def test_recover_puts_back_a_folder_set_aside_by_a_kill_between_two_renames(tmp_path):
    target = old_report(tmp_path)
    before = snapshot(target)
    target.rename(tmp_path / "reports.previous")           # the state a kill there leaves
    (tmp_path / "reports.building").mkdir()
    swap.recover(target)
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]


def test_first_build_creates_the_folder(tmp_path):
    with swap.building(tmp_path / "reports") as out:
        (out / "x").write_text("1")
    assert snapshot(tmp_path / "reports") == {"x": b"1"}

