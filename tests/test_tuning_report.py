"""The report's hyperparameter-search section (pipeline/tuning_report.py), built from a scratch
folder of fabricated tuned files (one likelihood study, one samples study)."""
from __future__ import annotations

import yaml

from pipeline import document, tuning_report
from pipeline.tables import DASH

SPACE_VAE = {"objective": "likelihood",
             "train": {"epochs": {"low": 20, "high": 500, "log": True},
                       "batch_size": {"choices": [50, 100, 200]}},
             "model": {"latent_dim": {"low": 2, "high": 32, "log": True},
                       "lr": {"low": 1.0e-4, "high": 3.0e-3, "log": True}}}
SPACE_GAN = {"objective": "samples", "train": {"epochs": {"low": 25, "high": 1000}},
             "model": {"lr_g": {"low": 1.0e-4, "high": 3.0e-3, "log": True},
                       "hidden": {"choices": [[128], [256, 256]]}}}


def study(objective, best, details, curve, cpu, space, trials=4, cap=6):
    return {"name": f"digits/x/{objective}", "storage": "sqlite:///results/tune/x/optuna.db",
            "objective": objective, "trials": trials, "trial_cpu_seconds": cap,
            "budget": {"ais_chains": 20}, "best_trial": 2, "best_value": best,
            "best_details": details, "cpu_seconds": cpu, "best_so_far": curve,
            "space": space, "git_commit": "0123456789ab"}


VAE = {"train": {"epochs": 212, "batch_size": 100},
       "model": {"latent_dim": 8, "lr": 0.00123456},
       "study": study("likelihood", -16.8975, {"method": "iwae", "kind": "lower_bound",
                                                "stderr": 0.31},
                      [None, -20.5, -16.8975, -16.8975], 20.04, SPACE_VAE)}
GAN = {"train": {"epochs": 75}, "model": {"lr_g": 0.0004, "hidden": [256, 256]},
       "study": study("samples", 0.8149, {"precision": 0.85, "recall": 0.79, "f": 0.8189,
                                         "duplicates": 0.004, "fid": 3.2},
                      [0.3, 0.6, 0.8149, 0.8149], 23.0, SPACE_GAN)}


def params(tuned="configs/tuned"):
    runs = [{"dataset": "digits", "model": m} for m in ("gan", "rbm", "vae")]
    return {"runs": runs, "tuned": tuned}


def write(root, model, block):
    path = root / "configs/tuned/digits" / f"{model}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(block, sort_keys=False, default_flow_style=None))


def build(tmp_path, p):
    figdir = tmp_path / "report/figures"
    figdir.mkdir(parents=True, exist_ok=True)
    blocks = tuning_report.tuning_blocks(p, figdir)
    return blocks, document.to_markdown(blocks, tmp_path / "report")


def rows_of(blocks):
    table = next(b[1] for b in blocks if b[0] == "table")
    return table.to_dict("records")


def test_section_holds_each_study_in_params_order_and_draws_the_figure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "vae", VAE)
    write(tmp_path, "gan", GAN)
    blocks, md = build(tmp_path, params())
    assert blocks[0] == ("h", 2, "Hyperparameter search (equal budget)")
    rows = rows_of(blocks)
    assert [r["model"] for r in rows] == ["gan", "vae", "2 studies"]    # params runs order
    gan, vae, total = rows
    assert vae == {"dataset": "digits", "model": "vae", "objective": "likelihood",
                   "trials": "4", "per-trial CPU cap [s]": "6",
                   "search space": "epochs, batch_size, latent_dim, lr",
                   "best validation value": "-16.90 nats (iwae, lower_bound)",
                   "tuning CPU [s]": "20.0",
                   "tuned values": "epochs 212, batch_size 100, latent_dim 8, lr 0.00123"}
    assert gan["best validation value"] == "F 0.82 - dup 0.00 = 0.81 (P 0.85, R 0.79)"
    assert gan["tuned values"] == "epochs 75, lr_g 0.0004, hidden [256, 256]"
    assert gan["search space"] == "epochs, lr_g, hidden" and gan["objective"] == "samples"
    assert total["dataset"] == "total" and total["tuning CPU [s]"] == "43.0"
    assert total["trials"] == "8"
    text = next(b[1] for b in blocks if b[0] == "p")
    assert "Every study had the same budget: 4 trials" in text and "past 6 CPU seconds" in text
    assert "validation split only" in text and "merged over params.yaml" in text
    assert "Tuning cost: 43.0 CPU seconds over 2 studies" in text
    assert "Runs without a tuned file keep their params.yaml values: digits/rbm." in text
    fig = tmp_path / "report/figures/tuning_best_so_far.png"
    assert ("img", fig, "hyperparameter search: best validation value so far") in blocks
    assert fig.stat().st_size > 0
    assert "![hyperparameter search: best validation value so far]" \
           "(figures/tuning_best_so_far.png)" in md
    html = document.to_html(blocks, "t")
    assert "data:image/png;base64," in html and "id='hyperparameter-search--equal-budget'" in html


def test_different_budgets_are_a_warning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "vae", VAE)
    write(tmp_path, "gan", GAN | {"study": GAN["study"] | {"trials": 3}})
    blocks, _ = build(tmp_path, params())
    text = next(b[1] for b in blocks if b[0] == "p")
    assert text.startswith("Warning: the studies did not all record the same budget "
                           "(trials: gan 3, vae 4)")
    assert "per-trial CPU cap" not in text.split(")")[0]     # only what differs is listed


def test_no_tuned_files_say_so_and_draw_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for p in (params(tuned=None), params()):          # no folder; a folder without files
        blocks, md = build(tmp_path, p)
        assert [b[0] for b in blocks] == ["h", "p"]
        assert "the runs use their params.yaml values; `snakemake --cores 8 tune` runs the " \
               "search" in md
    assert "params sets no tuned: folder" in build(tmp_path, params(tuned=None))[1]
    assert not (tmp_path / "report/figures/tuning_best_so_far.png").exists()


def test_a_malformed_study_block_shows_dashes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "vae", {"train": {"epochs": 30}, "model": {"lr": 0.01},
                            "study": {"objective": "likelihood", "trials": 4,
                                      "best_so_far": "not a list", "best_details": 7}})
    write(tmp_path, "gan", {"train": {"epochs": 75}, "study": "not a mapping"})
    blocks, md = build(tmp_path, params())
    gan, vae, total = rows_of(blocks)         # params runs order
    assert vae["objective"] == "likelihood" and vae["trials"] == "4"
    for key in ("per-trial CPU cap [s]", "search space", "best validation value",
                "tuning CPU [s]"):
        assert vae[key] == DASH and gan[key] == DASH, key
    assert vae["tuned values"] == "epochs 30, lr 0.01" and gan["tuned values"] == "epochs 75"
    assert total["model"] == "0 of 2 studies with a recorded CPU"
    assert "Warning: the studies did not all record the same budget" in md
    assert "No study recorded its tuning CPU." in md
    assert not any(b[0] == "img" for b in blocks)          # no curve to draw
