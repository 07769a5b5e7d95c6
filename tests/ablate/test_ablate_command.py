"""``pairforge ablate`` end to end on the bundled examples: a tiny model, 2 steps, 2 seeds."""

from __future__ import annotations

import json
import shutil

import pytest

from flows.cli import main
from pipeline.ablate.plan import VARIANT_NAMES
from tests.helpers import EXAMPLES, build_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore")


def ablate_args(out, model) -> list[str]:
    return [
        "ablate", "--sources", str(EXAMPLES / "sources.json"), "--out", str(out), "--model", str(model),
        "--max-steps", "2", "--batch-size", "4", "--warmup-steps", "0", "--seeds", "1,2", "--min-rows", "1",
        "--heldout-fraction", "0.3", "--device", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def prefect_harness():
    """Prefect's test harness for this module (the default 30 s start-up is too short on a busy 2-core machine)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def ablation(prefect_harness, tmp_path_factory):
    work = tmp_path_factory.mktemp("ablate")
    model = build_tiny_model(work / "tiny")
    out = work / "out"
    code = main(ablate_args(out, model))
    assert code == 0
    return out, json.loads((out / "report.json").read_text()), model


def test_the_report_has_every_variant_with_mean_and_std_per_metric_and_its_files(ablation):
    out, report, _model = ablation
    assert [v["name"] for v in report["variants"]] == list(VARIANT_NAMES)
    assert report["metrics"], "headline metrics"
    for variant in VARIANT_NAMES:
        for metric in report["metrics"]:
            entry = report["summary"][variant][metric]
            assert entry["n"] == 2 and entry["std"] is not None and len(entry["values"]) == 2
    assert {s["variant"] for s in report["steps"]} == set(VARIANT_NAMES) - {"naive"}
    assert report["verdict"]["recipe"] == "filtered" and report["verdict"]["against"] == "naive"
    # every variant against the start model, on every headline metric
    assert set(report["against_start"]) == set(VARIANT_NAMES)
    for variant in VARIANT_NAMES:
        for metric in report["metrics"]:
            entry = report["against_start"][variant][metric]
            expected = report["summary"][variant][metric]["mean"] - report["base_model"]["metrics"][metric]
            assert entry["delta"] == pytest.approx(expected, abs=1e-6)
    # a finished run keeps its model and record, not its checkpoints
    runs = list((out / "runs").glob("*/seed-*"))
    assert len(runs) == 2 * len(VARIANT_NAMES)
    assert all((r / "model" / "train_config.json").is_file() and not (r / "model" / "checkpoints").exists() for r in runs)
    assert all(json.loads((r / "timing.json").read_text())["train_seconds"] > 0 for r in runs)
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text()
    assert "| `filtered` |" in markdown and "What each step buys" in markdown and "Against the start model" in markdown


def test_variants_share_their_stages(ablation):
    out, report, _model = ablation
    by_name = {v["name"]: v for v in report["variants"]}
    corpus = sorted(p.name for p in (out / "corpus").iterdir() if (p / "manifest.json").is_file())
    # one mining per choice and pair dataset, shared by the variants that use it
    assert by_name["mined-percpos"]["datasets"] == by_name["weighted"]["datasets"]
    percpos = [n for n in corpus if n.endswith("-mined-percpos") and "-consistent" not in n]
    mined = [n for n in by_name["weighted"]["datasets"] if n.endswith("-mined-percpos")]
    assert mined and set(mined) <= set(percpos)  # a mined dataset without training rows is left out
    assert len([n for n in corpus if n.endswith("-mined-naive")]) == len(percpos)
    # clean and the mined variants train on one corpus; naive on its own
    assert by_name["clean"]["datasets"] == [n for n in corpus if n in by_name["clean"]["datasets"]]
    assert by_name["filtered"]["datasets"] and all("-rescored" in n for n in by_name["filtered"]["datasets"])
    weights = {e["name"]: e["weight"] for e in by_name["weighted"]["data_config"]}
    proportional = {e["name"]: e["weight"] for e in by_name["mined-percpos"]["data_config"]}
    assert weights != proportional


def test_a_rerun_reuses_every_stage_and_run(ablation, capsys):
    out, report, model = ablation
    before = {p: p.stat().st_mtime_ns for p in out.rglob("scores.json")}
    code = main(ablate_args(out, model))
    assert code == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("scores.json")} == before
    assert json.loads((out / "report.json").read_text()) == report
    assert "pairforge ablate summary" in capsys.readouterr().out


def test_an_unknown_variant_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["ablate", "--out", str(tmp_path / "o"), "--variants", "naive,best"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown variant(s): best" in err[0]


def test_a_rerun_with_other_options_starts_a_stale_run_over(ablation, tmp_path):
    out, _report, model = ablation
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    # a run killed under other options left checkpoints behind
    stale = copy / "runs" / "weighted" / "seed-1" / "model" / "checkpoints"
    (stale / "checkpoint-1").mkdir(parents=True)
    (stale / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (stale / "train_config.json").write_text(json.dumps({"config_hash": "0" * 64}))
    code = main([*ablate_args(copy, model), "--variants", "mined-percpos,weighted", "--weight-policy", "uniform"])
    assert code == 0
    report = json.loads((copy / "report.json").read_text())
    weighted = next(v for v in report["variants"] if v["name"] == "weighted")
    assert len({e["weight"] for e in weighted["data_config"]}) == 1  # uniform
    assert report["config"]["weight_policy"] == "uniform" and not stale.exists()
