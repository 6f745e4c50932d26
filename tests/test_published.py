"""configs/published.csv: parses, every row sourced, kinds from LogLikelihood's vocabulary."""
import pytest

from gm.base import KINDS
from pipeline import published as pub


def test_table_parses_and_every_row_has_a_source():
    rows = pub.load()
    assert len(rows) >= 20
    for r in rows:
        assert r["source"] and any(str(y) in r["source"] for y in range(2002, 2020)), r
        assert r["kind"] in KINDS


def test_kinds_match_the_metric():
    for r in pub.load():
        assert (r["kind"] == "proxy") == (r["metric"] == "parzen_log_likelihood"), r
        if r["metric"] == "test_log_likelihood":
            assert -200 < r["value"] < 0, r     # nats per binarized MNIST image, not negated


def test_lookup_by_dataset_and_model():
    rbm = pub.published_rows("binarized_mnist", "rbm")
    assert [r["value"] for r in rbm if "CD-25" in r["setting"]] == [-86.34]
    gan = pub.published_rows("mnist", "gan")
    assert gan[0]["value"] == 225 and gan[0]["stderr"] == 2 and gan[0]["kind"] == "proxy"
    assert pub.published_rows("digits", "rbm") == []


def test_a_bad_kind_names_the_line_and_field(tmp_path):
    bad = tmp_path / "published.csv"
    lines = pub.TABLE.read_text().splitlines()
    lines[1] = lines[1].replace(",estimate,", ",guess,")
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(pub.PublishedTableError, match="line 2: kind"):
        pub.load(bad)


def test_every_paper_run_has_its_published_row():
    """configs/paper.yaml and configs/published.csv name the same runs, variants included."""
    from pipeline import params as P
    from conftest import ROOT
    paper = P.load([ROOT / "params.yaml", ROOT / "configs/paper.yaml"])
    for ds, model, _ in P.runs(paper):
        rows = pub.published_rows(ds, model)
        assert rows, f"no published row for ({ds}, {model})"
    settings = {m: pub.published_rows("binarized_mnist", m)[0]["setting"]
                for m in ("rbm_cd1", "rbm_cd3")}
    assert "CD-1" in settings["rbm_cd1"] and "CD-3" in settings["rbm_cd3"]
    assert P.registered_model(paper, "iwae_k50") == "vae"
    assert paper["models"]["iwae_k50"]["model"]["iwae_k"] == 50
