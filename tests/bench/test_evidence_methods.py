"""The evidence runner's method recipes and table (bench/evidence/) on the tiny protocol tests/bench/tiny_v1.yaml:
a finished run is never run again, an interrupted one resumes from its last epoch, the search methods'
configurations differ only by strategy and seed, and the table shows every cell, "not run" where nothing ran,
and refuses to mix two protocols."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
EVIDENCE = REPO / "bench" / "evidence"
TINY = REPO / "tests" / "bench" / "tiny_v1.yaml"


def _runner():
    spec = importlib.util.spec_from_file_location("evidence_run", EVIDENCE / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts bench/evidence on sys.path, as running the script does
    return module


@pytest.fixture(scope="module")
def runner():
    return _runner()


@pytest.fixture
def workdir(tmp_path, runner):
    """A work folder of the tiny protocol holding a paragon (untrained: the tests read records, not accuracy)."""
    from paragon import paragon_recipe
    from protocol import load_protocol, protocol_workdir
    from splits import protocol_data

    from workers.gallery.model import GalleryArchitecture, GalleryEmbeddingNet, save_gallery

    protocol = load_protocol(TINY)
    folder = protocol_workdir(tmp_path, protocol)
    settings = paragon_recipe(protocol.section("paragon")).settings
    data = protocol_data(protocol.section("data")).selection
    arch = GalleryArchitecture(backbone=settings.backbone, embed_dim=settings.embed_dim, num_classes=10, in_chans=1,
                               image_size=28, stem_stride=settings.stem_stride)
    paragon = folder / "paragon" / "resnet10t-s2"
    paragon.mkdir(parents=True)
    save_gallery(paragon / "gallery.safetensors", GalleryEmbeddingNet(arch).eval(), data.mean, data.std,
                 {"recipe": "resnet10t-s2", "train_images": len(data.train), "epochs": 0})
    return tmp_path


def _run(runner, workdir: Path, *arguments: str) -> int:
    return runner.main(["--protocol", str(TINY), "--workdir", str(workdir), *arguments])


def test_a_finished_run_is_not_run_again_and_an_interrupted_one_resumes_after_its_last_epoch(runner, workdir, capsys):
    assert _run(runner, workdir, "independent", "--budget", "paragon/40", "--seed", "1") == 0
    folder = workdir / "tiny_v1" / "runs" / "independent" / "paragon-40" / "seed1"
    result = json.loads((folder / "result.json").read_text())
    assert result["loss_weights"] == {"own_classifier": 1.0} and result["seed"] == 1
    assert result["architecture"]["arch_id"] == "mobilenetv3_small_075-s2-r20"
    assert result["held_out_leave_one_out"]["queries"] == 300 and result["mflops"] <= result["budget_mflops"]
    assert (folder / "model.onnx").exists() and (folder / "held_out_outcomes.npz").exists()
    capsys.readouterr()
    written = (folder / "result.json").stat().st_mtime_ns
    assert _run(runner, workdir, "independent", "--budget", "paragon/40", "--seed", "1") == 0
    assert "finished already" in capsys.readouterr().out
    assert (folder / "result.json").stat().st_mtime_ns == written
    # Killed after its last epoch, before its result: the rerun continues from the saved state, training nothing.
    (folder / "result.json").unlink()
    assert _run(runner, workdir, "independent", "--budget", "paragon/40", "--seed", "1") == 0
    out = capsys.readouterr().out
    assert "resuming after epoch 2" in out and "/2 loss" not in out  # the tiny protocol's final_epochs: 2
    assert json.loads((folder / "result.json").read_text())["held_out_leave_one_out"] == result["held_out_leave_one_out"]


def test_a_seed_or_budget_outside_the_protocol_is_refused(runner, workdir, capsys):
    assert _run(runner, workdir, "fixed_bct", "--budget", "paragon/40", "--seed", "7") == 2
    assert "not among the protocol's seeds" in capsys.readouterr().err
    assert _run(runner, workdir, "fixed_bct", "--budget", "paragon/80", "--seed", "0") == 2
    assert "not a budget of tiny_v1" in capsys.readouterr().err


def test_cmpnas_and_random_run_the_same_search_but_for_the_strategy(runner, tmp_path):
    from protocol import load_protocol
    from search_config import method_config_tree, write_method_config

    protocol = load_protocol(TINY)
    trees = {method: method_config_tree(protocol, method, 1.5, 2, tmp_path / method, tmp_path / "paragon.safetensors")
             for method in ("cmpnas", "random")}
    configs = {method: write_method_config(tree, tmp_path / method / "config.yaml") for method, tree in trees.items()}
    cmpnas, random = (configs[name].model_dump(mode="json") for name in ("cmpnas", "random"))
    assert cmpnas["search"].pop("strategy") == "evolution" and random["search"].pop("strategy") == "random"
    for config in (cmpnas, random):
        config.pop("output_dir"), config.pop("tracking")
    assert cmpnas == random
    assert cmpnas["data"]["trial_train_size"] == 400 and cmpnas["data"]["train_size"] == 1000
    assert cmpnas["search"]["max_mflops"] == 1.5 and cmpnas["search"]["seed"] == 2
    assert cmpnas["search"]["final_training"]["epochs"] == 2 and cmpnas["search"]["metric"] == "cross_r1"
    assert cmpnas["evaluation"]["held_out"] == "leave_one_out"
    assert cmpnas["gallery"]["checkpoint"] == str(tmp_path / "paragon.safetensors")
    assert cmpnas["training"]["loss_weights"] == {"cosine_alignment": 10.0}  # the base config's losses


def _fake_run(workdir: Path, protocol, method: str, budget: str, seed: int, hits: np.ndarray, mflops: float) -> Path:
    folder = workdir / protocol.name / "runs" / method / budget.replace("/", "-") / f"seed{seed}"
    folder.mkdir(parents=True)
    ranks = np.where(hits, 1, 3)
    np.savez_compressed(folder / "held_out_outcomes.npz", first_relevant_rank=ranks,
                        average_precision=hits.astype(float))
    result = {**protocol.identity(), "code_commit": "c0ffee", "method": method, "budget": budget, "seed": seed,
              "finished": "now", "held_out_leave_one_out": {"r1": 100 * hits.mean()}, "mflops": mflops,
              "params": 1000, "architecture": {"arch_id": f"{method}-{seed}"}, "runs": {}, "input_shape": [1, 28, 28]}
    (folder / "result.json").write_text(json.dumps(result))
    return folder


def test_the_table_shows_every_cell_not_run_where_nothing_ran_and_the_paired_search_gain(runner, tmp_path):
    from protocol import load_protocol, protocol_workdir
    from table import NOT_RUN, write_table

    protocol = load_protocol(TINY)
    protocol_workdir(tmp_path, protocol)
    rng = np.random.default_rng(0)
    for seed in (0, 1, 2):
        _fake_run(tmp_path, protocol, "cmpnas", "paragon/40", seed, rng.random(300) < 0.8, 1.4)
        _fake_run(tmp_path, protocol, "random", "paragon/40", seed, rng.random(300) < 0.5, 1.3)
    _fake_run(tmp_path, protocol, "fixed_bct", "paragon/20", 0, rng.random(300) < 0.6, 2.9)
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Appendix: Earlier runs and runs under load\n")
    write_table(protocol, tmp_path / "tiny_v1", tmp_path / "results", docs, lambda _message: None)
    table = json.loads((tmp_path / "results" / "tiny_v1.json").read_text())
    cells = {(cell["method"], cell["budget"]): cell for cell in table["cells"]}
    assert len(cells) == 4 * 3  # every method at every budget of the protocol
    assert cells[("independent", "paragon/40")]["status"] == NOT_RUN
    assert cells[("fixed_bct", "paragon/20")]["status"] == "partial"
    assert cells[("fixed_bct", "paragon/20")]["seeds_missing"] == [1, 2]
    cmpnas = cells[("cmpnas", "paragon/40")]
    assert cmpnas["status"] == "complete" and cmpnas["r1"]["low"] < cmpnas["r1"]["estimate"] < cmpnas["r1"]["high"]
    assert cmpnas["latency_x"] is None  # `latency` not run: no ratio from figures of separate sessions
    gain = table["search_gain"]["paragon/40"]
    assert gain["excludes_zero"] and gain["low"] > 0 and table["search_gain"]["paragon/20"]["status"] == NOT_RUN
    assert table["targets"]["gap"]["verdict"] == NOT_RUN  # no measured paragon
    assert table["targets"]["search_gain"]["verdict"] == "missed"  # above zero at one budget of the two asked
    text = docs.read_text()
    assert text.index("<!-- evidence-table tiny_v1: start -->") < text.index("## Appendix")
    assert f"| independent | paragon/40 | {NOT_RUN} |" in text
    # Written again: the block is replaced, not repeated.
    write_table(protocol, tmp_path / "tiny_v1", tmp_path / "results", docs, lambda _message: None)
    assert docs.read_text().count("evidence-table tiny_v1: start") == 1


def test_the_table_refuses_rows_of_another_protocol(runner, tmp_path):
    from protocol import ProtocolError, load_protocol, protocol_workdir
    from table import write_table

    protocol = load_protocol(TINY)
    protocol_workdir(tmp_path, protocol)
    folder = _fake_run(tmp_path, protocol, "cmpnas", "paragon/40", 0, np.ones(300, bool), 1.4)
    docs = tmp_path / "benchmarks.md"
    results = tmp_path / "results"
    results.mkdir()
    (results / "tiny_v1.json").write_text(json.dumps({"protocol_sha256": "0" * 64}))  # an edited protocol's results
    with pytest.raises(ProtocolError, match="never edited after its results exist"):
        write_table(protocol, tmp_path / "tiny_v1", results, docs, print)
    (results / "tiny_v1.json").unlink()
    record = json.loads((folder / "result.json").read_text())
    (folder / "result.json").write_text(json.dumps({**record, "protocol": "other_v1", "protocol_sha256": "1" * 64}))
    with pytest.raises(ProtocolError, match="never mixed"):
        write_table(protocol, tmp_path / "tiny_v1", results, docs, print)
    assert not (results / "tiny_v1.json").exists() and not docs.exists()


def test_the_paragons_embeddings_are_cached_per_data_and_never_read_for_other_images(runner, workdir):
    """A protocol whose data differ (another seed here) computes its own embeddings beside the cached ones."""
    import torch
    from paragon_inputs import held_out_gallery, selection_embeddings
    from protocol import load_protocol
    from splits import protocol_data

    folder = workdir / "tiny_v1" / "paragon" / "resnet10t-s2"
    data_section = load_protocol(TINY).section("data")
    first = protocol_data(data_section)
    cpu = torch.device("cpu")
    held_out, selection = held_out_gallery(folder, first, cpu), selection_embeddings(folder, first, cpu)
    cached = sorted(path.name for path in folder.glob("*_*-*.np*"))
    assert len(cached) == 2
    written = {path.name: path.stat().st_mtime_ns for path in folder.glob("*_*-*.np*")}
    # The same data again: read from the cache, not computed.
    np.testing.assert_array_equal(held_out_gallery(folder, first, cpu), held_out)
    np.testing.assert_array_equal(selection_embeddings(folder, first, cpu).train, selection.train)
    assert {path.name: path.stat().st_mtime_ns for path in folder.glob("*_*-*.np*")} == written
    other = protocol_data({**data_section, "seed": 1})
    other_selection = selection_embeddings(folder, other, cpu)
    assert len(list(folder.glob("selection_embeddings-*.npz"))) == 2
    assert not np.array_equal(other_selection.train, selection.train)
    held_out_gallery(folder, other, cpu)
    assert len(list(folder.glob("held_out_gallery-*.npy"))) == 2  # another seed draws another held-out pool
