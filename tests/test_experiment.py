"""`rho experiment` at tiny scale on files the test writes: the config, every arm over two
held-out axes, decontamination, the report, and resume after kill -9."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    HANG_GUARD_S,
    SUBPROCESS_ENV,
    assert_traceable,
    experiment_files,
    last_record,
    parse_options,
    write_config,
    write_corpus,
)

from rho.errors import UserError
from rho.experiment.arms import ARMS
from rho.experiment.records import Results
from rho.experiment.settings import ExperimentConfig, load_yaml
from rho.io.files import jsonable


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return experiment_files(tmp_path_factory.mktemp("experiment-data"))


def rho(*args, cache: Path, timeout=HANG_GUARD_S) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rho", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**SUBPROCESS_ENV, "RHO_CACHE": str(cache)},
    )


@pytest.mark.slow
def test_every_arm_on_two_axes_from_a_config(tmp_path, data):
    out = tmp_path / "run"
    config = write_config(tmp_path / "config.yaml", data, out, arms="all", reference_seeds=[0, 1],
                          reference_base="tiny")  # fmt: skip
    run = rho("experiment", "--config", config, cache=tmp_path / "cache")
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    # results.json is the typed Results of every stage's record, and reads back through it
    assert (
        json.loads(json.dumps(jsonable(Results.read(out / "results.json").model_dump()))) == results
    )
    assert list(results["runs"]) == list(ARMS)
    assert [r["seed"] for r in results["runs"]["slm"]] == [0, 1]
    # SLM's seed i reads reference i's scores; the reference arm has a spread.
    assert [r["reference_seed"] for r in results["runs"]["slm"]] == [0, 1]
    assert [r["seed"] for r in results["runs"]["reference"]] == [0, 1]
    assert results["summary"]["losses"]["reference"]["target"]["n"] == 2
    assert [r["seed"] for r in results["runs"]["rholoss"]] == [0]
    for arm, runs in results["runs"].items():
        for r in runs:
            for split in ("validation", "test"):
                assert set(r["final"][split]) == {"target", "general"}, arm
    trained = {a: rs[0]["train_tokens"] for a, rs in results["runs"].items() if a != "reference"}
    assert len(set(trained.values())) == 1, trained  # one budget for every arm
    # RHO-LOSS draws candidate_factor x the windows it trains on, and pays their forwards.
    rho_run = last_record(results["runs"]["rholoss"][0]["run"], "candidate_windows")
    factor = results["config"]["candidate_factor"]
    assert rho_run["candidate_windows"] == factor * rho_run["windows_trained"]
    assert rho_run["flops_candidates"] > 0
    overhead = results["overhead"]
    assert "clm" not in overhead and "slm-random" not in overhead and "reference" not in overhead
    # Only the drawn windows are scored: SLM its budget, the pruned arms the 1/keep budgets
    # they choose from, RHO-LOSS its candidates.
    budget = results["config"]["train_tokens"]
    scored = {arm: overhead[arm]["tokens_scored"] for arm in ("slm", "pruned-clm", "rholoss")}
    assert scored == {"slm": budget, "pruned-clm": 2 * budget, "rholoss": factor * budget}
    reference_flops = results["references"]["reference-seed0"]["flops_train"]
    n_ref = results["references"]["reference-seed0"]["n_params"]
    assert overhead["pruned-clm"]["flops"] == pytest.approx(reference_flops + 4 * n_ref * budget)
    # Prototype pruning is charged its embedding only; with SLM, the reference's costs too.
    assert overhead["proto-clm"]["what"] == "embedding the drawn windows + clustering"
    embedding = overhead["proto-clm"]["flops"]
    proto_scored = overhead["proto-slm"]["tokens_scored"]  # the kept windows only
    assert embedding > 0 and overhead["proto-slm"]["flops"] == pytest.approx(
        reference_flops + embedding + 2 * n_ref * proto_scored
    )
    assert proto_scored < 2 * budget
    # Decontamination dropped the held-out document copied into the corpus.
    target = results["data"]["decontamination"]["target"]
    assert target["documents_dropped"] >= 1 and target["after"]["shared_fraction"] == 0.0
    report = (out / "report.md").read_text()
    for section in ("Decontamination", "Test loss on every axis", "Compute to reach",
                    "Token-loss dynamics", "pruned-slm", "rholoss+token"):  # fmt: skip
        assert section in report, section
    for figure in ("curves.png", "axes.png", "frontier.png", "selected.html"):
        assert (out / figure).stat().st_size > 1000, figure
    assert_traceable(report, results)
    assert "Each arm's scoring reference" in report and "paired t-test" in report
    frontier = results["summary"]["axes"]["target"]["frontier"]  # every axis has one
    assert set(results["summary"]["axes"]) == {"target", "general"}
    assert frontier["best"] in results["runs"] and "## The compute frontier" in report
    # The console: compact lines, no raw Trainer dicts, no weight-loading bars.
    assert "{'loss'" not in run.stdout + run.stderr and "Loading weights" not in run.stderr
    assert "slm-seed1" in run.stdout + run.stderr


def test_leaked_document_is_caught_before_training(tmp_path, data):
    from rho.experiment.prepare import prepare

    cfg = ExperimentConfig(**json.loads(write_config(tmp_path / "c.yaml", data, tmp_path / "o")
                                        .read_text()))  # fmt: skip
    result = prepare(cfg, tmp_path / "stage")
    dropped = result.decontamination["target"].dropped
    texts = [json.loads(line)["text"] for line in Path(data["target"]).read_text().splitlines()]
    assert [texts[i] for i in dropped] == [data["leaked"]]
    kept = "".join((tmp_path / "stage" / "heldout" / f"target-{s}.jsonl").read_text()
                   for s in ("validation", "test"))  # fmt: skip
    assert data["leaked"] not in kept


@pytest.mark.slow
def test_killed_mid_arm_resumes_without_redoing_finished_stages(tmp_path, data):
    """kill -9 while an arm trains; the rerun skips every finished stage and its results equal
    an uninterrupted run's."""
    cache = tmp_path / "cache"
    clean = tmp_path / "clean"
    config = write_config(tmp_path / "clean.yaml", data, clean, arms="clm,slm", seeds=[0],
                          analyze=False)  # fmt: skip
    assert rho("experiment", "--config", config, cache=cache).returncode == 0
    out = tmp_path / "killed"
    config = write_config(tmp_path / "killed.yaml", data, out, arms="clm,slm", seeds=[0],
                          analyze=False)  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "rho", "experiment", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**SUBPROCESS_ENV, "RHO_CACHE": str(cache)})  # fmt: skip
    arm = out / "stages" / "slm-seed0"
    deadline = time.monotonic() + HANG_GUARD_S
    while not (arm / "run").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (arm / "stage.json").exists(), "the arm finished before it was killed"
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("stages/*/stage.json")}
    assert "clm-seed0" in finished and "score-ref0-draw-x1-seed0" in finished
    rerun = rho("experiment", "--config", config, cache=cache)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for name, mtime in finished.items():  # not redone
        assert (out / "stages" / name / "stage.json").stat().st_mtime_ns == mtime, name
    assert "done before (skipped)" in rerun.stdout + rerun.stderr
    a = json.loads((clean / "results.json").read_text())["runs"]
    b = json.loads((out / "results.json").read_text())["runs"]
    for arm_name in ("clm", "slm"):
        assert a[arm_name][0]["final"] == b[arm_name][0]["final"], arm_name


def test_config_and_flags(tmp_path, data):
    config = write_config(tmp_path / "c.yaml", data, tmp_path / "o", ratio=0.5)
    cfg, _, _, compare = parse_options("experiment", ["--config", config, "--ratio", "0.7"])
    assert cfg.ratio == 0.7 and cfg.seeds == [0, 1] and cfg.base == "tiny"  # the flag wins
    assert compare.compare is None  # a run, not a comparison
    assert cfg.heldout_sets() == {"target": [data["target"]], "general": [data["general"]]}
    (tmp_path / "bad.yaml").write_text("ratoi: 0.5\n")
    with pytest.raises(UserError, match="unknown option 'ratoi'"):
        load_yaml(tmp_path / "bad.yaml")
    with pytest.raises(UserError, match="--ratio"):
        ExperimentConfig(ratio=0.0)
    with pytest.raises(UserError, match="unknown arm"):
        ExperimentConfig(arms="clm,rho")
    with pytest.raises(UserError, match="NAME=FILE"):
        ExperimentConfig(heldout=["nofile"]).heldout_sets()
    with pytest.raises(UserError, match="needs --base_data"):
        ExperimentConfig(curated=[data["curated"]], corpus=[data["corpus"]],
                         heldout=[f"t={data['target']}"]).check_inputs()  # fmt: skip


def test_training_options_reach_the_training_arguments(tmp_path, data):
    """`training: {...}` in a config sets TrainingArguments of every run (bf16 on a GPU); a step
    stays --batch_size windows (accumulation makes the micro-batches smaller); what the
    experiment sets itself, an unknown option, or an accumulation that does not divide the
    batch is one line."""
    from rho.experiment.training_run import training_arguments

    config = write_config(tmp_path / "c.yaml", data, tmp_path / "o",
                          training={"bf16": True, "gradient_accumulation_steps": 4,
                                    "weight_decay": 0.0})  # fmt: skip
    cfg = ExperimentConfig(**load_yaml(config))
    args = training_arguments(tmp_path / "run", cfg.view("arms"), 10, 0, 1e-3, save=False)
    assert args.bf16 and args.weight_decay == 0.0 and args.gradient_accumulation_steps == 4
    assert args.per_device_train_batch_size * 4 == cfg.batch_size
    plain = training_arguments(tmp_path / "run", ExperimentConfig(), 10, 0, 1e-3, save=False)
    assert not plain.bf16 and plain.weight_decay == 0.1 and plain.gradient_accumulation_steps == 1
    assert ExperimentConfig(training='{"fp16": false}').training == {"fp16": False}  # a flag
    for bad, message in [
        ({"learning_rate": 1.0}, "use --learning_rate"),
        ({"bf17": True}, "'bf17' is not a transformers.TrainingArguments option"),
        ({"gradient_accumulation_steps": 3}, "positive divisor of --batch_size 16"),
        ("{bf16: true}", "--training is not JSON"),
    ]:
        with pytest.raises(UserError, match=message):
            ExperimentConfig(training=bad)


@pytest.mark.slow
def test_a_model_directory_as_base(tmp_path, data):
    """`base: DIR` (any saved AutoModelForCausalLM with its tokenizer): no base pretraining,
    the model's own tokenizer, every arm and the reference continue from it."""
    from rho.data.tokenize import tokenize_corpus
    from rho.models import build_model

    store = tokenize_corpus([data["base"]], tmp_path / "tok", train_vocab=400, progress=False)
    base = tmp_path / "base-model"
    build_model("tiny", store.vocab_size, seed=3, max_positions=64).save_pretrained(base)
    store.tokenizer().save_pretrained(base)
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", data, out, base=str(base), base_data=[],
                          arms="clm,slm", seeds=[0], analyze=False)  # fmt: skip
    run = rho("experiment", "--config", config, cache=tmp_path / "cache")
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["tokens"].get("base") is None  # nothing pretrained here
    assert not (tmp_path / "cache").exists()
    start = {a: r[0]["curve"]["target"][0] for a, r in results["runs"].items()}
    assert start["clm"] == start["slm"]  # both start from the given model


@pytest.mark.slow
def test_from_scratch(tmp_path, data):
    """`from_scratch: true`: no base; the reference and every arm start from a fresh preset
    (the arms of one seed from the same initialisation)."""
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", data, out, from_scratch=True, base_data=[],
                          arms="clm,slm", seeds=[0], analyze=False)  # fmt: skip
    run = rho("experiment", "--config", config, cache=tmp_path / "cache")
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    start = {a: r[0]["curve"]["target"][0] for a, r in results["runs"].items()}
    assert start["clm"] == start["slm"] and not (tmp_path / "cache").exists()
    assert "from scratch" in (out / "report.md").read_text()


def test_the_traceability_check_can_fail():
    results = {"a": 5.3647, "b": [0.22, 1586528], "c": 123.4}
    assert_traceable("loss 5.3647, 22%, 1,586,528 tokens, 120 s", results)
    with pytest.raises(AssertionError, match="5.3648"):
        assert_traceable("loss 5.3648", results)
    with pytest.raises(AssertionError, match="23%"):
        assert_traceable("23% of it", results)
    quoted = {"config": {"choices": "picked with arms of 100 steps"}, "a": 1.0}
    assert_traceable("chosen before it: picked with arms of 100 steps", quoted)  # its own words
    with pytest.raises(AssertionError, match="77"):
        assert_traceable("picked with arms of 100 steps; 77 s", quoted)


# ----------------------------------------------------------- stage keys that cannot go stale


@pytest.mark.slow
def test_rerun_with_other_seeds_trains_the_reference_it_reports(tmp_path, data):
    """--seeds 0 1, then --seeds 1 2 into the same directory: the reference of the second run
    is trained with seed 1 (it was reused from seed 0 and reported as seed 1). The two real
    runs are then compared (--compare), which trains nothing."""
    import torch

    out, cache, first = tmp_path / "run", tmp_path / "cache", tmp_path / "first.json"
    for seeds in ([0, 1], [1, 2]):
        config = write_config(tmp_path / "c.yaml", data, out, arms="clm,slm,reference",
                              seeds=seeds, analyze=False)  # fmt: skip
        run = rho("experiment", "--config", config, cache=cache)
        assert run.returncode == 0, run.stderr[-3000:]
        if not first.exists():
            first.write_bytes((out / "results.json").read_bytes())
    stages = sorted((out / "stages").iterdir())
    compared = rho("experiment", "--config", config, "--compare", first, cache=cache)
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert sorted((out / "stages").iterdir()) == stages  # nothing trained
    for arm in ("clm", "slm", "reference"):
        assert re.search(rf"^{arm} +target +\d\.\d{{4}}", compared.stdout, re.M), arm
    assert "settings that differ: seeds" in compared.stdout
    results = json.loads((out / "results.json").read_text())
    (reference,) = results["runs"]["reference"]
    args = torch.load(Path(reference["run"]) / "training_args.bin", weights_only=False)
    assert reference["seed"] == args.seed == 1
    assert [r["reference_seed"] for r in results["runs"]["slm"]] == [1, 1]
    assert "seeds [1]" in (out / "report.md").read_text()


@pytest.mark.slow
def test_changing_dynamics_checkpoints_redoes_the_analyses(tmp_path, data):
    out, cache = tmp_path / "run", tmp_path / "cache"
    found = []
    for n in (2, 3):
        config = write_config(tmp_path / "c.yaml", data, out, arms="clm", seeds=[0],
                              dynamics_checkpoints=n, evals=3)  # fmt: skip
        run = rho("experiment", "--config", config, cache=cache)
        assert run.returncode == 0, run.stderr[-3000:]
        found.append(json.loads((out / "results.json").read_text())["analyses"])
    assert [a["dynamics_checkpoints"] for a in found] == [2, 3]


@pytest.mark.slow
def test_two_experiments_share_one_base_without_clobbering_it(tmp_path, data):
    """Two experiments with different --out on the same data start at once: one pretrains the
    cached base under its lock, the other waits and reuses it; its metrics hold one run."""
    cache = tmp_path / "cache"
    procs = []
    for name in ("a", "b"):
        config = write_config(tmp_path / f"{name}.yaml", data, tmp_path / name, arms="clm",
                              seeds=[0], analyze=False)  # fmt: skip
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "rho", "experiment", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**SUBPROCESS_ENV, "RHO_CACHE": str(cache)}))  # fmt: skip
    logs = [p.communicate(timeout=HANG_GUARD_S)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    (base,) = [p for p in (cache / "stages").iterdir() if p.name.startswith("base-")]
    steps = [r["step"] for r in map(json.loads, (base / "run" / "metrics.jsonl").open())
             if "loss" in r and "step" in r]  # fmt: skip
    assert steps == sorted(set(steps)), steps  # one run, not two interleaved
    assert sum("base (pretrained, cached): done before (skipped)" in log for log in logs) == 1
    a, b = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("a", "b"))
    assert a["runs"]["clm"][0]["final"] == b["runs"]["clm"][0]["final"]


def test_globs_and_a_dataset_directory_as_inputs(tmp_path, data):
    """The README's `corpus: [web/*.jsonl]` glob, and an HF dataset directory (a documented
    input) as the corpus: both expand and hash before the data stage."""
    import datasets

    from rho.experiment.prepare import inputs_key, texts_of

    web = tmp_path / "web"
    web.mkdir()
    for i in range(2):
        (web / f"part{i}.jsonl").write_text(Path(data["corpus"]).read_text())
    config = write_config(tmp_path / "c.yaml", data, tmp_path / "o", corpus=[str(web / "*.jsonl")])
    cfg = ExperimentConfig(**json.loads(config.read_text()))
    cfg.check_inputs()
    assert cfg.corpus == [str(web / "part0.jsonl"), str(web / "part1.jsonl")]
    texts = [json.loads(line)["text"] for line in Path(data["corpus"]).read_text().splitlines()]
    saved = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(saved))
    cfg.corpus = [str(saved)]
    key = inputs_key(cfg.view("data"))
    assert len(key["corpus"]) == 1 and len(key["corpus"][0]) == 64
    assert texts_of(str(saved)) == [t for t in texts if t.strip()]
    with pytest.raises(UserError, match="no input matches"):
        missing = str(tmp_path / "none*.jsonl")
        ExperimentConfig(
            curated=[data["curated"]], corpus=[missing], heldout=[f"t={data['target']}"]
        ).check_inputs()


@pytest.mark.slow
def test_an_experiment_on_latex_heavy_text_writes_its_report(tmp_path):
    """Math text reaches plot labels and titles (fluctuating tokens, selection analyses): `$`,
    `$$`, `\\frac`, `%`, `_`, `^` and unbalanced `$` are shown, never parsed as mathtext."""
    rng = random.Random(1)
    bits = ["$x_1$", "$$", "\\frac{a}{b}", "%", "_", "^", "$", "$a^2 + b_3$", "\\alpha", "{", "}"]
    words = [f"w{i}" for i in range(30)]

    def doc() -> str:  # math marks dense enough that every token's context holds several
        return " ".join(rng.choice(bits * 4 + words) for _ in range(120))

    files = {
        name: write_corpus(tmp_path / f"{name}.jsonl", [doc() for _ in range(n)])
        for name, n in (("curated", 20), ("corpus", 60), ("target", 20), ("general", 20))
    }
    data = {**files, "base": files["corpus"]}
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", data, out, arms="clm,slm", seeds=[0], evals=3,
                          dynamics_checkpoints=3, decontam_threshold=1.0)  # fmt: skip
    run = rho("experiment", "--config", config, cache=tmp_path / "cache")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert (out / "report.md").stat().st_size > 1000
    assert list((out / "stages" / "analyses").rglob("*.png"))


@pytest.mark.slow
def test_a_proxy_reference_is_charged_at_its_own_size(tmp_path, data):
    """`reference_base`: the references start from their own pretrained preset (cached like the
    base); SLM's overhead charges the proxy's pretraining, training and scoring at its size."""
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", data, out, arms="clm,slm-proxy", seeds=[0],
                          base="1m", reference_base="tiny", analyze=False)  # fmt: skip
    run = rho("experiment", "--config", config, cache=tmp_path / "cache")
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    proxy, reference = results["proxy"], results["references"]["proxy-ref-seed0"]
    (clm,) = results["runs"]["clm"]
    assert proxy["n_params"] == reference["n_params"] < clm["n_params"]
    scored = results["overhead"]["slm-proxy"]["tokens_scored"]
    charged = proxy["flops_train"] + reference["flops_train"] + 2 * reference["n_params"] * scored
    assert results["overhead"]["slm-proxy"]["flops"] == pytest.approx(charged)
    assert results["overhead"]["slm-proxy"]["what"].startswith("proxy pretraining")
    assert len(list((tmp_path / "cache" / "stages").glob("base-*"))) == 2  # base and proxy
    assert "smaller proxy, `tiny`" in (out / "report.md").read_text()


@pytest.mark.slow
def test_self_reference_arms_need_no_curated_data(tmp_path, data):
    """No curated files: slm-self and slm-entropy read a self-reference (the base trained one
    pass on a seeded share of the corpus's windows), which stores the entropy too; an arm that
    needs curated data is refused in one line."""
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", data, out, arms="clm,slm-self,slm-entropy",
                          seeds=[0], analyze=False, self_reference=0.25)  # fmt: skip
    text = json.loads(config.read_text())
    config.write_text(json.dumps({**text, "curated": []}))
    run = rho("experiment", "--config", config, cache=tmp_path / "cache")
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert "curated" not in results["data"]["tokens"]
    ref = results["references"]["self-ref-seed0"]
    assert ref["source"] == "self"
    corpus_windows = results["data"]["tokens"]["corpus"] // results["config"]["seq_len"]
    assert ref["train_tokens"] <= round(0.25 * corpus_windows) * results["config"]["seq_len"]
    assert results["runs"]["slm-entropy"][0]["reference_seed"] == 0
    scored = out / "stages" / "score-self0-draw-x1-seed0" / "ref_losses"
    assert (scored / "ref_entropy.npy").exists()
    assert results["overhead"]["slm-entropy"] == results["overhead"]["slm-self"]
    report = (out / "report.md").read_text()
    assert "self-references (no curated data)" in report
    assert_traceable(report, results)
    refused = rho("experiment", "--config", config, "--arms", "clm,slm", cache=tmp_path / "cache")
    assert refused.returncode == 2 and "--arms slm needs --curated" in refused.stderr
