"""The report's figures (pipeline/plots.py), read back from the matplotlib objects they draw."""
from __future__ import annotations

import itertools

import matplotlib
import numpy as np
import pandas as pd
import pytest

import gm
from gm.base import Curve
from pipeline import plots, tables
from pipeline.record import (
    AISConvergence,
    AISPoint,
    Estimate,
    EvalRecord,
    SampleMetric,
    Timing,
)

EPOCHS = {"c_model": 11, "a_model": 3, "b_model": 7}   # distinct lengths, not in sorted order
CURVES = {"c_model": ("nll", "negative log-likelihood", "nats per image", False),
          "a_model": ("recon_error", "reconstruction error", "bits per image", False),
          "b_model": ("elbo", "ELBO", "nats per image", True)}


def curve_value(model: str, seed: int, epoch: int) -> float:
    """A value that names its model, seed and epoch (so a line can be traced to its rows)."""
    return 100.0 * list(EPOCHS).index(model) + 10.0 * seed + epoch / 100


def curve_frame() -> pd.DataFrame:
    """A progress frame whose rows come in shuffled order (first appearance != sorted)."""
    rows = [{"dataset": "d", "model": m, "family": "energy", "seed": s, "epoch": e,
             "metric": CURVES[m][0], "value": curve_value(m, s, e), "label": CURVES[m][1],
             "unit": CURVES[m][2], "higher_is_better": CURVES[m][3]}
            for m, n in EPOCHS.items() for s in (0, 1) for e in range(1, n + 1)]
    order = np.random.default_rng(0).permutation(len(rows))
    return pd.DataFrame([rows[i] for i in order])


def test_each_curve_panel_is_titled_and_labelled_from_the_data_it_draws():
    fig = plots.curves_figure(curve_frame(), "d: training curves")
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.lines]
    assert len(panels) == 3
    for ax in panels:
        model, label = ax.get_title().replace("\n", " ").split(": ")
        metric, unit, higher = CURVES[model][0], CURVES[model][2], CURVES[model][3]
        assert label == CURVES[model][1]
        ylabel = ax.get_ylabel().replace("\n", " ")
        assert metric in ylabel and f"[{unit}]" in ylabel
        assert ("higher is better" if higher else "lower is better") in ylabel
        assert len(ax.lines) == 2                                  # one thin line per seed
        for seed, line in enumerate(ax.lines):
            x, y = line.get_xdata(), line.get_ydata()
            assert len(x) == EPOCHS[model]
            np.testing.assert_allclose(x, np.arange(1, EPOCHS[model] + 1))
            np.testing.assert_allclose(y, [curve_value(model, seed, e) for e in x])
    matplotlib.pyplot.close(fig)


def test_progress_frame_takes_the_declared_curve_not_the_first_logged_metric(monkeypatch):
    rbm, bm = gm.model_class("rbm"), gm.model_class("bm")
    monkeypatch.setattr(rbm, "progress", Curve("recon_error", "reconstruction error", "bits"))
    monkeypatch.setattr(bm, "progress", None)
    history = [{"epoch": e, "epoch_seconds": 0.1, "lr": 0.05, "recon_error": 9.0 - e}
               for e in (1, 2, 3)]
    trains = [{"dataset": "d", "model": "rbm_cd3", "seed": 0, "history": history},
              {"dataset": "d", "model": "bm", "seed": 0, "history": history}]
    frame = plots.progress_frame(trains, registered={"rbm_cd3": "rbm"})
    assert set(frame["model"]) == {"rbm_cd3"}        # bm declares nothing: no made-up curve
    assert set(frame["metric"]) == {"recon_error"}   # not "lr", the first logged metric
    assert frame["value"].tolist() == [8.0, 7.0, 6.0]
    assert set(frame["family"]) == {"energy"}
    (_, _, fig), = plots.curve_figures(trains, "d", {"rbm_cd3": "rbm"})
    assert "no declared progress curve: bm" in fig._suptitle.get_text()
    matplotlib.pyplot.close(fig)


def test_curves_split_into_one_figure_per_family_when_the_grid_is_large(monkeypatch):
    names = [n for n in gm.model_names() if gm.model_class(n).progress is None]
    for n in gm.model_names():
        monkeypatch.setattr(gm.model_class(n), "progress", Curve("loss", "loss"))
    trains = [{"dataset": "d", "model": n, "seed": 0,
               "history": [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]}
              for n in gm.model_names()]
    assert len(trains) > plots.MAX_CURVE_PANELS, names
    figs = plots.curve_figures(trains, "d")
    families = {plots.family_of(gm.model_class(n)) for n in gm.model_names()}
    assert [c for c, _, _ in figs] == [f"training curves: {f}" for f in plots.FAMILIES
                                       if f in families]
    drawn = sorted(ax.get_title().split(":")[0] for _, _, f in figs for ax in f.axes
                   if ax.get_visible() and ax.lines)
    assert drawn == sorted(gm.model_names())
    for _, _, f in figs:
        matplotlib.pyplot.close(f)


def record(model, seed, value, kind="exact", view="binary", method="exact", fid=None,
           conv=None, train_seconds=1.0, info=None) -> EvalRecord:
    metrics = {} if fid is None else {"fid": SampleMetric(fid, fid - 1, fid + 1,
                                                          {"better": "lower",
                                                           "space": "features"})}
    return EvalRecord(dataset="d", model=model, seed=seed, data_view=view,
                      test_log_likelihood=Estimate(value, 0.1, method, kind, 100, info or {}),
                      n_parameters=10, timing=Timing(train_seconds, 1.0),
                      ais_convergence=conv, sample_metrics=metrics,
                      budget={"ais_betas": 1000})


RECORDS = [record("rbm", s, -18 - s, fid=10 + s) for s in (0, 1)] \
    + [record("dbm", s, -17.5, "estimate", method="ais", fid=30) for s in (0, 1)] \
    + [record("vae", s, -19.0, "lower_bound", method="iwae", fid=8) for s in (0, 1)] \
    + [record("diffusion", s, -20.0, "lower_bound", method="elbo", fid=5) for s in (0, 1)] \
    + [record("gan", s, -5.0, "proxy", method="parzen", fid=4) for s in (0, 1)] \
    + [record("gmmn", s, -9.0, "proxy", method="parzen", fid=3) for s in (0, 1)] \
    + [record("gaussian_ar", s, 50.0, "exact", view="real", fid=2) for s in (0, 1)]


def test_likelihood_panels_keep_kinds_and_views_apart():
    fig = plots.likelihood_figure(plots.likelihood_frame(RECORDS, "d"), "d", pixels=10)
    panels = {ax.get_title(loc="left"): ax for ax in fig.axes if ax.get_title(loc="left")}
    expect = {("binary", "likelihood"): {"rbm", "dbm"}, ("binary", "lower bound"):
              {"vae", "diffusion"}, ("binary", "proxy"): {"gan", "gmmn"},
              ("real", "likelihood"): {"gaussian_ar"}}
    assert len(panels) == len(expect)
    for (view, group), models in expect.items():
        ax = panels[f"{plots.VIEW_TITLE[view]}: {plots.GROUP_TITLE[group]}"]
        shown = {t.get_text().split(" (")[0] for t in ax.get_yticklabels()}
        assert shown == models
        assert "nats per image" in ax.get_xlabel()
        assert ("density" in ax.get_xlabel()) == (view == "real")
        assert ("Parzen proxy" in ax.get_xlabel()) == (group == "proxy")
        bits = [c for c in ax.child_axes if "bits per dimension" in c.get_xlabel()]
        assert len(bits) == (view == "binary" and group != "proxy")
        if bits:   # -log p / (pixels ln 2) beside nats
            fig.canvas.draw()
            np.testing.assert_allclose(sorted(bits[0].get_xlim()),
                                       sorted(-np.array(ax.get_xlim()) / (10 * np.log(2))))
    # best on top, and rbm's bar spans its seeds' range [-19, -18]
    ax = panels[f"{plots.VIEW_TITLE['binary']}: {plots.GROUP_TITLE['likelihood']}"]
    assert ax.get_yticklabels()[-1].get_text().startswith("dbm")
    bars = [ln.get_xdata() for ln in ax.lines if len(ln.get_xdata()) == 2]
    assert any(np.allclose(sorted(b), [-19, -18]) for b in bars)
    matplotlib.pyplot.close(fig)


def test_baselines_are_hollow_and_the_best_baseline_is_a_line(monkeypatch):
    monkeypatch.setattr(gm.model_class("fvsbn"), "is_baseline", True)
    recs = RECORDS + [record("fvsbn", s, -18.7 - s) for s in (0, 1)]
    fig = plots.likelihood_figure(plots.likelihood_frame(recs, "d"), "d", optimum=-15.0)
    ax = next(a for a in fig.axes if a.get_title(loc="left").endswith(
        plots.GROUP_TITLE["likelihood"]) and a.get_title(loc="left").startswith("binary"))
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert "fvsbn (exact, baseline)" in ticks and "rbm (exact)" in ticks
    marks = {round(float(ln.get_xdata()[0]), 3): ln.get_markerfacecolor() for ln in ax.lines
             if ln.get_marker() == "o"}
    assert marks[-19.2] == "white" and marks[-18.5] != "white"   # baseline hollow
    vertical = {(round(float(ln.get_xdata()[0]), 3), ln.get_linestyle()) for ln in ax.lines
                if len(set(ln.get_xdata())) == 1 and ln.get_marker() in ("None", "")}
    assert (-19.2, "--") in vertical and (-15.0, ":") in vertical   # best baseline, optimum
    matplotlib.pyplot.close(fig)


def convergence(exact):
    pts = tuple(AISPoint(b, 10.0 + 1.0 / b, 0.01) for b in (10, 100, 1000, 3000))
    return AISConvergence(exact, pts)


def test_ais_figure_runs_past_the_headline_with_the_exact_log_z_at_zero():
    recs = [record("rbm", 0, -18, conv=convergence(10.0)),
            record("dbm", 0, -17, "estimate", conv=convergence(None))]
    frame = plots.ais_frame(recs, "d")
    fig = plots.ais_figure(frame, "d")
    axes = {ax.get_title().split(" ")[0]: ax for ax in fig.axes if ax.get_visible()}
    for model, exact in (("rbm", True), ("dbm", False)):
        ax = axes[model]
        assert ax.get_xscale() == "log"
        data = next(ln for ln in ax.lines if len(ln.get_xdata()) == 4)
        assert max(data.get_xdata()) == 3000
        ref = 10.0 if exact else 10.0 + 1 / 3000
        np.testing.assert_allclose(data.get_ydata(), [10 + 1 / b - ref
                                                      for b in (10, 100, 1000, 3000)])
        flat = [ln for ln in ax.lines if list(ln.get_ydata()) == [0, 0]]
        assert flat and (flat[0].get_linestyle() == "-") == exact   # solid: exact log Z
        assert any(list(ln.get_xdata()) == [1000, 1000] for ln in ax.lines)   # the headline
        assert ("exact log Z" in ax.get_ylabel()) == exact
    matplotlib.pyplot.close(fig)


def test_the_reported_run_joins_the_convergence_runs_and_is_the_reference():
    """A headline AIS run past the convergence points (14,500 distributions against 3,000) is
    drawn as a star, and the curve is measured from it; the table says log Z still moved."""
    info = {"log_z": 12.0, "ais_betas": 14500.0, "log_z_stderr": 0.5}
    recs = [record("rbm", 0, -18, "estimate", method="ais", conv=convergence(None), info=info),
            record("dbm", 0, -17, "estimate", method="mean_field+ais", conv=convergence(None),
                   info={**info, "log_z": 10.0 + 1 / 3000 + 0.2}),
            record("bm", 0, -16, conv=convergence(10.0))]           # exact: no reported run
    frame = plots.ais_frame(recs, "d")
    rbm = frame[frame["model"] == "rbm"].sort_values("betas")
    assert rbm["betas"].tolist() == [10, 100, 1000, 3000, 14500]
    assert rbm["reported"].tolist() == [False] * 4 + [True]
    np.testing.assert_allclose(rbm["delta"], [10 + 1 / b - 12 for b in (10, 100, 1000, 3000)]
                               + [0.0])
    assert not frame[frame["model"] == "bm"]["reported"].any()
    fig = plots.ais_figure(frame, "d")
    ax = next(a for a in fig.axes if a.get_visible() and a.get_title().startswith("rbm"))
    stars = [ln for ln in ax.lines if ln.get_marker() == "*"]
    assert [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in stars] == [([14500], [0.0])]
    matplotlib.pyplot.close(fig)
    table = tables.convergence_table(frame).set_index("model")
    assert list(table.index) == ["dbm", "rbm"]                      # bm has its exact log Z
    assert table.loc["rbm", "distributions"] == "3,000 -> 14,500 (reported)"
    assert table.loc["rbm", "change [nats]"] == f"{12 - 10 - 1 / 3000:+.3f}"
    assert table.loc["rbm", "within 2 stderr"] == "no"              # +2.0 against 2 x 0.50
    assert table.loc["dbm", "within 2 stderr"] == "yes"             # +0.2


def test_the_likelihood_table_names_the_models_whose_log_z_still_moved():
    from pipeline import report
    info = {"log_z": 12.0, "ais_betas": 14500.0, "log_z_stderr": 0.5}
    recs = [record("rbm", 0, -18, "estimate", method="ais", conv=convergence(None), info=info),
            record("dbm", 0, -17, "estimate", method="ais", conv=convergence(None))]
    settled = tables.convergence_table(plots.ais_frame(recs, "d"))
    moving = frozenset(settled.loc[settled["within 2 stderr"] == "no", "model"])
    assert moving == {"rbm"}                  # dbm: 1,000 -> 3,000 moved by 7e-4 nats
    rows = tables.summarise(recs, {})
    blocks = report.value_blocks("d", rows, "likelihood", "binary", tables.DatasetInfo(16),
                                 {}, pd.DataFrame(), {}, moving)
    text = " ".join(b[1] for b in blocks if b[0] == "p")
    assert "AIS not converged" in text and ": rbm. Their values are likely too high." in text
    blocks = report.value_blocks("d", rows, "likelihood", "binary", tables.DatasetInfo(16),
                                 {}, pd.DataFrame(), {})
    assert "AIS not converged" not in " ".join(b[1] for b in blocks if b[0] == "p")


def test_a_headline_at_a_convergence_point_adds_no_run():
    info = {"log_z": 99.0, "ais_betas": 1000.0, "log_z_stderr": 0.5}
    frame = plots.ais_frame([record("rbm", 0, -18, "estimate", method="ais",
                                    conv=convergence(None), info=info)], "d")
    assert frame["betas"].tolist() == [10, 100, 1000, 3000] and not frame["reported"].any()
    assert tables.convergence_table(frame)["distributions"].tolist() == ["1,000 -> 3,000"]


@pytest.mark.parametrize("lower_better,expect", [(True, [1, 1, 0, 1, 0]),
                                                 (False, [0, 1, 0, 0, 1])])
def test_pareto_front_on_a_known_case(lower_better, expect):
    x = np.array([1.0, 2.0, 3.0, 0.5, 4.0])
    y = np.array([-2.0, -1.0, -1.5, -3.0, -1.2])
    assert plots.pareto_front(x, y, lower_better).tolist() == [bool(e) for e in expect]


def test_labels_of_a_crowded_cluster_do_not_overlap_and_are_deterministic():
    def draw():
        fig, ax = matplotlib.pyplot.subplots(figsize=(6, 4))
        xs = np.array([1.0, 1.05, 1.1, 1.0, 1.08, 1.02, 5.0, 9.0])
        ys = np.array([1.0, 1.02, 0.98, 1.05, 1.04, 0.97, 3.0, 0.0])
        ax.plot(xs, ys, "o")
        ax.margins(0.2)
        texts = [f"model_{i}" for i in range(len(xs))]
        labels = plots.place_labels(ax, xs, ys, texts)
        renderer = fig.canvas.get_renderer()
        # the text's own box (an Annotation's extent also covers its leader line)
        boxes = []
        for t in labels:
            t.update_positions(renderer)
            boxes.append(matplotlib.text.Text.get_window_extent(t, renderer))
        pos = [(t.get_text(), t.xyann) for t in labels]
        matplotlib.pyplot.close(fig)
        return boxes, pos

    boxes, pos = draw()
    for a, b in itertools.combinations(boxes, 2):
        assert plots._overlap(a, b) == 0
    assert draw()[1] == pos


def test_better_than_matrix_colours_each_cell_by_significance_and_direction():
    rows = []
    truth = {("a", "b"): (2.0, True), ("a", "c"): (3.0, True), ("b", "c"): (0.2, False)}
    for (a, b), (d, sig) in truth.items():
        for x, y, s in ((a, b, 1), (b, a, -1)):
            rows.append({"dataset": "d", "view": "binary", "group": "likelihood", "a": x,
                         "b": y, "mean_diff": s * d, "low": s * d - 0.5, "high": s * d + 0.5,
                         "significant": sig})
    fig = plots.better_figure(pd.DataFrame(rows), "d")
    ax, = fig.axes
    order = [t.get_text() for t in ax.get_yticklabels()]
    assert order == ["a", "b", "c"] == [t.get_text() for t in ax.get_xticklabels()]
    rgb = np.asarray(ax.images[0].get_array())
    color = {k: np.array(matplotlib.colors.to_rgb(v)) for k, v in plots.BETTER_COLORS.items()}
    for (a, b), (d, sig) in truth.items():
        i, j = order.index(a), order.index(b)
        np.testing.assert_allclose(rgb[i, j], color[1 if sig else 0])
        np.testing.assert_allclose(rgb[j, i], color[-1 if sig else 0])
    cells = {t.get_text() for t in ax.texts}
    assert {"+2.0", "-2.0", "+3.0", "+0.2", "-0.2"} <= cells
    matplotlib.pyplot.close(fig)


def test_dataset_figures_writes_every_figure_deterministically_within_the_report_width(
        tmp_path, monkeypatch):
    monkeypatch.setattr(gm.model_class("rbm"), "progress", Curve("recon_error", "recon"))
    recs = RECORDS + [record("rbm", 2, -18.5, conv=convergence(10.0), fid=11)]
    trains = [{"dataset": "d", "model": r.model, "seed": r.seed,
               "history": [{"epoch": e, "recon_error": 5.0 / e} for e in (1, 2, 3)]}
              for r in recs]
    pairs = pd.DataFrame([{"dataset": "d", "view": "binary", "group": "likelihood", "a": a,
                           "b": b, "mean_diff": d, "low": d - 1, "high": d + 1,
                           "significant": abs(d) > 1}
                          for a, b, d in (("rbm", "dbm", -1.5), ("dbm", "rbm", 1.5))])
    out = []
    for run in ("one", "two"):
        (tmp_path / run).mkdir()
        out.append(plots.dataset_figures(recs, trains, "d", tmp_path / run, pairs))
    assert list(out[0]) == ["test log-likelihoods by kind", "paired comparisons (better than)",
                            "training curves", "AIS convergence",
                            "likelihood against FID (Pareto)",
                            "likelihood against training cost (Pareto)"]
    from PIL import Image
    for name, path in out[0].items():
        assert path.read_bytes() == out[1][name].read_bytes(), name
        assert Image.open(path).width <= 1200, name


def test_dvc_plots_show_draws_one_panel_per_model_with_epoch_on_x(tmp_path, monkeypatch):
    """reports/progress.csv through the repository's dvc.yaml plot definition and template
    (pipeline/progress_plot.json): `dvc plots show` faceting by model, x = epoch, colour =
    seed, no smoothing."""
    import json
    import shutil
    import subprocess

    import yaml
    from conftest import ROOT, run
    template = ROOT / "pipeline" / "progress_plot.json"
    report = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]
    spec = [p["reports/progress.csv"] for p in report.get("plots", [])
            if isinstance(p, dict) and "reports/progress.csv" in p]
    assert template.exists() and spec, \
        "dvc.yaml's report stage must plot reports/progress.csv with pipeline/progress_plot.json"
    monkeypatch.setattr(gm.model_class("rbm"), "progress", Curve("recon_error", "recon", "bits"))
    monkeypatch.setattr(gm.model_class("nade"), "progress", Curve("nll", "NLL", "nats"))
    trains = [{"dataset": "d", "model": m, "seed": s,
               "history": [{"epoch": e, "lr": 0.1, "recon_error": 1.0 / e, "nll": 2.0 / e}
                           for e in range(1, n + 1)]}
              for m, n in (("rbm", 4), ("nade", 6)) for s in (0, 1)]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    run(["dvc", "init", "-q"], tmp_path)
    run(["dvc", "config", "core.analytics", "false"], tmp_path)
    (tmp_path / "pipeline").mkdir()
    shutil.copy(template, tmp_path / "pipeline" / "progress_plot.json")
    (tmp_path / "reports").mkdir()
    plots.progress_table(trains).to_csv(tmp_path / "reports" / "progress.csv", index=False)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"report": {"cmd": "true", "plots": [{"reports/progress.csv": spec[0]}]}}}))
    shown = json.loads(run(["dvc", "plots", "show", "--json"], tmp_path).stdout)
    content, = (p["content"] for p in shown["data"]["reports/progress.csv"])
    assert content["facet"]["field"] == "panel"
    enc = content["spec"]["encoding"]
    assert enc["x"]["field"] == "epoch" and enc["y"]["field"] == "value"
    assert enc["color"]["field"] == "seed"
    assert "transform" not in content["spec"] and "loess" not in json.dumps(content)
    rows = content["data"]["values"]
    per_panel = {}
    for r in rows:
        per_panel.setdefault(r["panel"].split("\n")[0], set()).add((r["seed"], r["epoch"]))
    assert {k: len(v) for k, v in per_panel.items()} == {"d / rbm": 8, "d / nade": 12}
    assert {r["metric"] for r in rows} == {"recon_error", "nll"}   # never "lr"
