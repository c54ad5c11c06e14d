"""`rho experiment`'s stage keys and arm registry (rho.experiment.plan, settings, arms): change
every config field in turn and check that exactly the stages that read it are redone, against a
table written here by hand (not derived from the code under test)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers import one_line_files, planned_config

from rho.experiment import arms as arms_module
from rho.experiment.arms import ARMS, Arm
from rho.experiment.plan import plan
from rho.experiment.prepare import inputs_key
from rho.experiment.settings import STAGES_OF, ExperimentConfig
from rho.experiment.stats import difference


@pytest.fixture
def files(tmp_path) -> dict:
    return one_line_files(tmp_path, ("curated", "corpus", "base", "target", "general", "other"))


def base_config(files: dict) -> ExperimentConfig:
    return planned_config(
        files,
        arms="all",
        reference_seeds=[0, 1],
        pick_share=0.3,  # so that --pick may be set alone
    )


def planned(cfg: ExperimentConfig) -> dict[str, str]:
    return {name: stage.key for name, stage in plan(cfg, inputs_key(cfg)).items()}


DRAWS = {"draw-x1-seed0", "draw-x1-seed1", "draw-mix-x1-seed0", "draw-x2-seed0", "draw-x4-seed0"}
REFERENCES = {"reference-seed0", "reference-seed1"}  # the reference arm's runs score too
SCORES = {"score-ref0-draw-x1-seed0", "score-ref1-draw-x1-seed1", "score-ref0-draw-mix-x1-seed0",
          "score-ref0-draw-x2-seed0", "score-ref0-proto-draw-x2-seed0",
          "score-ref0-draw-x4-seed0", "prune-ref0-draw-x2-seed0"}  # fmt: skip
USES_SCORES = {"slm-seed0", "slm-seed1", "slm-mix-seed0", "pruned-clm-seed0", "pruned-slm-seed0",
               "rholoss-seed0", "rholoss+token-seed0", "proto-slm-seed0"}  # fmt: skip
# The self-reference arms: the base trained on a sample of the corpus scores their windows.
SELF_ARMS = {"slm-self-seed0", "slm-entropy-seed0"}
SELF = {"self-sample-seed0", "self-ref-seed0", "score-self0-draw-x1-seed0"} | SELF_ARMS
ARM_RUNS = USES_SCORES | SELF_ARMS | {"clm-seed0", "clm-seed1", "slm-random-seed0",
                                      "clm-mix-seed0", "proto-clm-seed0"}  # fmt: skip
PROTO = {"proto-draw-x2-seed0", "score-ref0-proto-draw-x2-seed0", "proto-clm-seed0",
         "proto-slm-seed0"}  # fmt: skip
EVERY = ({"data", "mix", "base", "embed-draw-x2-seed0", "analyses"} | DRAWS | REFERENCES | SCORES
         | ARM_RUNS | PROTO | SELF)  # fmt: skip
# the draws and the self-reference's sample read the data, not the base
AFTER_BASE = EVERY - {"data", "mix", "self-sample-seed0"} - DRAWS
MIXED = {"draw-mix-x1-seed0", "clm-mix-seed0", "score-ref0-draw-mix-x1-seed0", "slm-mix-seed0"}

# field -> (a new value, the stages a rerun must redo). New stages count as redone; a stage that
# disappears is not. "other" is another file. The arms other than clm and slm run seed 0 only,
# so only reference 0 scores their draws.
CHANGES = {
    "curated": (["other"], EVERY),
    "corpus": (["other"], EVERY),
    "heldout": (["target=other", "general=general"], EVERY),
    "out": ("elsewhere", set()),
    "base": ("1m", EVERY),  # a preset base's tokenizer is trained on the data
    "base_data": (["other"], EVERY),
    "base_tokens": (1000, AFTER_BASE),
    "from_scratch": (True, AFTER_BASE),
    # a proxy: "all" now holds slm-proxy, with the proxy, its reference and its scores
    "reference_base": (
        "1m",
        {"proxy", "proxy-ref-seed0", "score-proxy0-draw-x1-seed0", "slm-proxy-seed0"},
    ),  # fmt: skip
    "tokenizer": ("some/tokenizer", EVERY),
    "vocab": (512, EVERY),
    "arms": ("clm,slm", set()),
    "seeds": ([0, 2], {"clm-seed2", "slm-seed2", "draw-x1-seed2", "score-ref1-draw-x1-seed2"}),
    "seeded_arms": ("clm,slm,slm-random", {"slm-random-seed1"}),
    "reference_seeds": ([0, 2], {"reference-seed2", "score-ref2-draw-x1-seed1", "slm-seed1"}),
    "train_tokens": (4096, EVERY - {"data", "mix", "base", "self-sample-seed0", "self-ref-seed0"}),
    # the scoring references are no longer the reference arm's runs: both redone
    "ref_tokens": (
        3000,
        {"ref-seed0", "ref-seed1"} | REFERENCES | SCORES | USES_SCORES | {"analyses"},
    ),  # fmt: skip
    "curated_tokens": (5000, EVERY),
    "self_reference": (0.2, SELF),
    "ratio": (
        0.5,
        {
            "slm-seed0",
            "slm-seed1",
            "slm-random-seed0",
            "slm-mix-seed0",
            "pruned-slm-seed0",
            "rholoss+token-seed0",
            "proto-slm-seed0",
            "analyses",
        }
        | SELF_ARMS,
    ),  # fmt: skip
    "mix_share": (0.3, {"mix"} | MIXED),
    # the pruned arms draw 4 budgets (rholoss's draw, already scored) and prune it
    "prune_keep": (0.25, {"prune-ref0-draw-x4-seed0", "pruned-clm-seed0", "pruned-slm-seed0"}),
    "candidate_factor": (
        8,
        {"draw-x8-seed0", "score-ref0-draw-x8-seed0", "rholoss-seed0", "rholoss+token-seed0"},
    ),  # fmt: skip
    "proto_keep": (
        0.25,
        {
            "embed-draw-x4-seed0",
            "proto-draw-x4-seed0",
            "score-ref0-proto-draw-x4-seed0",
            "proto-clm-seed0",
            "proto-slm-seed0",
        },
    ),  # fmt: skip
    "proto_from": ("easy", PROTO),
    "proto_dedup": (0.9, PROTO),
    "embed_layer": (0, {"embed-draw-x2-seed0"} | PROTO),
    "seq_len": (128, EVERY - {"data", "mix"}),
    "batch_size": (8, EVERY - {"data", "mix", "self-sample-seed0"}),
    "learning_rate": (
        5e-4,
        REFERENCES | SCORES | ARM_RUNS | SELF - {"self-sample-seed0"} | {"analyses"},
    ),  # fmt: skip
    "base_learning_rate": (1e-3, AFTER_BASE),
    "training": ({"weight_decay": 0.0}, AFTER_BASE),
    "evals": (4, AFTER_BASE),
    "eval_windows": (0, AFTER_BASE),
    "validation_fraction": (0.4, EVERY),
    "pick_share": (0.5, EVERY),
    "pick": (True, EVERY),
    "decontam_threshold": (0.1, EVERY),
    "dynamics_checkpoints": (3, {"analyses"}),
    "analyze": (False, set()),
    "choices": ("picked by hand", set()),
    # the ladder's runs are new stages (by default of clm only); nothing else changes
    "budgets": ("0.5,1", {"clm-b0.5-seed0", "clm-b0.5-seed1"}),
    "ladder_arms": ("clm,slm", set()),  # no budget below 1: no ladder
    "target_axis": ("general", set()),  # the verdict's, not a stage's
}


def test_the_table_names_every_field():
    assert set(CHANGES) == {f.name for f in dataclasses.fields(ExperimentConfig)}
    assert set(STAGES_OF) == set(CHANGES)  # every field declares its stages


def test_the_plan_of_the_base_config(files):
    assert set(planned(base_config(files))) == EVERY


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_changing_a_field_redoes_exactly_the_stages_that_read_it(files, name):
    before = planned(base_config(files))
    value, expected = CHANGES[name]
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = [files.get(v, v) if "=" not in v else v.replace("=other", f"={files['other']}")
                 .replace("=general", f"={files['general']}") for v in value]  # fmt: skip
    cfg = dataclasses.replace(base_config(files), **{name: value})
    after = planned(cfg)
    redone = {stage for stage, key in after.items() if before.get(stage) != key}
    assert redone == set(expected), name


def test_the_reference_seed_is_in_its_key(files):
    """The audit's stale case: --seeds 0 1, then --seeds 1 2 into the same directory trained
    the reference with seed 0 and reported it as seed 1."""
    first = planned(dataclasses.replace(base_config(files), seeds=[0, 1], reference_seeds=[]))
    second = planned(dataclasses.replace(base_config(files), seeds=[1, 2], reference_seeds=[]))
    assert "reference-seed0" in first and "reference-seed1" in second
    assert "reference-seed1" not in first  # a new stage, trained with seed 1


def test_a_stage_cannot_read_a_field_it_did_not_declare(files):
    cfg = base_config(files)
    assert cfg.view("analyses").dynamics_checkpoints == 5
    with pytest.raises(AttributeError, match="does not declare --learning_rate"):
        cfg.view("analyses").learning_rate  # noqa: B018
    assert cfg.view("arms", ARMS["slm"].reads).ratio == 0.6
    with pytest.raises(AttributeError, match="--ratio"):
        cfg.view("arms", ARMS["clm"].reads).ratio  # noqa: B018


def test_adding_an_arm_is_one_registry_entry(files, monkeypatch):
    half = Arm("slm-half", "SLM at half the ratio", selection="token", reads=("ratio",),
               overhead=("reference", "score"), corpus_order=True)  # fmt: skip
    monkeypatch.setitem(arms_module.ARMS, "slm-half", half)
    cfg = dataclasses.replace(base_config(files), arms="clm,slm-half")
    stages = plan(cfg, inputs_key(cfg))
    assert stages["slm-half-seed0"].reference_seed == 0
    assert stages["slm-half-seed0"].scores == "score-ref0-draw-x1-seed0"
    assert stages["slm-half-seed0"].charges == ("reference-seed0", "score-ref0-draw-x1-seed0")
    assert half.selection_arguments(cfg).selection == "token"


def test_every_arm_is_complete(files):
    for arm in ARMS.values():
        assert arm.data in ("corpus", "mix", "pruned", "proto", "curated"), arm.name
        assert set(arm.overhead) <= {"reference", "score", "prune", "embed"}, arm.name
        assert set(arm.reads) <= set(STAGES_OF), arm.name
        text = arm.text(base_config(files), 0.2)
        assert text and "{" not in text, arm.name


def test_paired_test_by_hand():
    # Differences -1, -1, -2: mean -4/3, sd 0.577, se 1/3, t = -4, df 2, p = 0.057. The old
    # rule (|Δ| > 2·SE: 1.33 > 0.67) called this supported; the paired t-test does not.
    d = difference([1, 2, 3], [2, 3, 5], paired=True)
    assert d.test == "paired t-test (by seed)" and d.df == 2
    assert d.t == pytest.approx(-4.0) and d.se == pytest.approx(1 / 3)
    assert d.p == pytest.approx(0.0572, abs=1e-4) and d.supported is False
    assert d.critical == pytest.approx(4.303, abs=1e-3)


def test_a_proxy_reference_is_pretrained_once_and_shared(files):
    cfg = dataclasses.replace(base_config(files), reference_base="1m", base="5m")
    stages = plan(cfg, inputs_key(cfg))
    assert stages["proxy"].cached and stages["proxy"].name.startswith("base-")
    assert stages["proxy"].key != stages["base"].key
    assert stages["proxy-ref-seed0"].after == ("data", "proxy")  # slm-proxy's reference
    assert stages["reference-seed0"].after == ("data", "base")  # slm's: the learner's size
    assert "proxy" not in stages["clm-seed0"].after  # the learner still starts from the base
    proxy_arm = stages["slm-proxy-seed0"]
    assert proxy_arm.scores == "score-proxy0-draw-x1-seed0"
    assert proxy_arm.charges == ("proxy-ref-seed0", "proxy", "score-proxy0-draw-x1-seed0")
    assert proxy_arm.windows == stages["slm-seed0"].windows  # the same drawn windows
    longer = dataclasses.replace(cfg, base_tokens=999)
    after = plan(longer, inputs_key(longer))
    assert after["proxy"].key != stages["proxy"].key  # it is pretrained like the base


def test_the_same_files_elsewhere_change_no_key(files, tmp_path):
    """Files count by content: the demo writes its files into each --out, and the cached base
    must be found again from another run directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = {}
    for name, path in files.items():
        moved[name] = str(elsewhere / f"{name}.jsonl")
        Path(moved[name]).write_bytes(Path(path).read_bytes())
    assert planned(base_config(moved)) == planned(base_config(files))


def test_a_draw_is_whole_windows_and_a_larger_draw_holds_a_smaller(token_store, tmp_path):
    from rho.experiment.prepare import draw_windows
    from rho.io.store import TokenStore

    store, seq = token_store, 16
    small = draw_windows(store, seq, 5, seed=3, out=tmp_path / "small")
    large = draw_windows(store, seq, 10, seed=3, out=tmp_path / "large")
    other = draw_windows(store, seq, 5, seed=4, out=tmp_path / "other")
    assert small.of == store.n_tokens // seq and small.windows == 5

    def windows(result):
        drawn = TokenStore(result.tokens)
        assert drawn.n_tokens == result.windows * seq  # whole windows only
        return {tuple(drawn.window(i, seq)) for i in range(drawn.n_windows(seq))}

    every = {tuple(store.window(i, seq)) for i in range(store.n_tokens // seq)}
    assert windows(small) <= windows(large) <= every
    assert windows(small) != windows(other)  # the seed draws
    everything = draw_windows(store, seq, 10**9, seed=0, out=tmp_path / "all")
    assert everything.windows == everything.of  # a draw larger than the source: all of it


def test_the_cached_base_is_keyed_by_what_changes_its_bytes(files, monkeypatch):
    """torch's or transformers' version, or the device type, changes a pretrained base's bytes:
    the cached base (and everything after it) gets a new key; accelerate's version does not."""
    from rho.experiment import environment

    cfg = dataclasses.replace(base_config(files), reference_base="1m", base="5m")
    installed, device = environment.versions(), environment.device_type()
    before = plan(cfg, inputs_key(cfg))

    def keys_with(device=device, **changed) -> dict:
        monkeypatch.setattr(environment, "versions", lambda: {**installed, **changed})
        monkeypatch.setattr(environment, "device_type", lambda: device)
        return plan(cfg, inputs_key(cfg))

    same = keys_with()
    assert {n: s.key for n, s in same.items()} == {n: s.key for n, s in before.items()}
    for changed in ({"torch": "0.0.1"}, {"transformers": "0.0.1"}, {"device": "other"}):
        after = keys_with(**changed)
        for name in ("base", "proxy"):
            assert after[name].key != before[name].key, changed
            assert after[name].name == f"base-{after[name].key}"  # its own cache entry
        assert after["slm-seed0"].key != before["slm-seed0"].key
        assert after["data"].key == before["data"].key
    unchanged = keys_with(accelerate="0.0.1")
    assert unchanged["base"].key == before["base"].key
