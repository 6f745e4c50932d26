"""`dvc repro` reruns exactly the stages a parameter or a source file touches."""
from conftest import run
from rerun_helpers import edit_source, model_stages, ran_stages, rbm_and_fvsbn_project


def test_dvc_repro_reruns_only_what_a_parameter_touches(project):
    path = rbm_and_fvsbn_project(project)
    first = run(["dvc", "repro"], path, timeout=900).stdout
    # and the code fingerprints: 2 models x 2, report, prepare, classifier
    assert len(ran_stages(first)) == 8 + 7
    assert ran_stages(run(["dvc", "repro"], path).stdout) == set()
    metrics = run(["dvc", "metrics", "show", "--json"], path).stdout
    assert "test_log_likelihood" in metrics and "reports/metrics.json" in metrics
    run(["dvc", "plots", "show", "-o", "plots_html"], path)
    assert (path / "plots_html" / "index.html").stat().st_size > 0
    text = (path / "params.yaml").read_text().replace("n_hidden: 8", "n_hidden: 6")
    (path / "params.yaml").write_text(text)
    again = ran_stages(run(["dvc", "repro"], path, timeout=900).stdout)
    assert again == {"train@run0-0", "evaluate@run0-0", "report"}, again
    text = text.replace("ais_betas: 100", "ais_betas: 90")     # a budget: evaluation only
    (path / "params.yaml").write_text(text)
    budget = ran_stages(run(["dvc", "repro"], path, timeout=900).stdout)
    assert budget == {"evaluate@run0-0", "evaluate@run1-0", "report"}, budget
    # code is an input: one model's file reruns that model; a shared estimator its users
    edit_source(path, "gm/models/autoregressive/fvsbn.py")
    assert model_stages(run(["dvc", "repro"], path, timeout=900).stdout) == {
        "train@run1-0", "evaluate@run1-0", "report"}
    edit_source(path, "gm/estimators/exact.py")                # used by rbm, not by fvsbn
    assert model_stages(run(["dvc", "repro"], path, timeout=900).stdout) == {
        "train@run0-0", "evaluate@run0-0", "report"}
    # the dataset's module reruns prepare; its bytes are the same, so no model reruns (the
    # report does: it depends on all of results/, the new fingerprint included)
    edit_source(path, "gm/data/bars_stripes.py")
    assert model_stages(run(["dvc", "repro"], path).stdout) == {"prepare@bars_stripes", "report"}
    import yaml
    params = yaml.safe_load((path / "params.yaml").read_text())
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=True))  # reordered
    assert model_stages(run(["dvc", "repro"], path).stdout) == set()
