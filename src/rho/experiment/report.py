"""The demo's words: report.md (held-out losses, the arms table and how its costs are counted,
the selection and dynamics analyses, timings, the commands behind it) and the one-screen
summary printed at the end; both read only the results dict that becomes results.json."""

from __future__ import annotations

from pathlib import Path

from rho.experiment.compute import COST_KEYS


def _ratio(x) -> str:
    return "not reached" if x is None else f"{x:.2f}"


def arms_markdown(r: dict) -> str:
    """The arms table: final loss and, to reach CLM's final loss, each cost as a ratio to CLM."""
    arms = r["arms"]
    lines = [
        "| arm | final held-out loss | training tokens | training FLOPs | total FLOPs "
        "| wall time (training) | wall time (total) |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, a in arms.items():
        ratio = a["ratio"] or {}
        cells = [_ratio(ratio.get(k)) for k in COST_KEYS]
        lines.append(f"| {arm} | {a['final_heldout_loss']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def arms_explained(r: dict) -> list[str]:
    clm = r["arms"]["clm"]["reach"]
    cfg = r["config"]
    return [
        "Each cost is measured up to the point where the arm's held-out loss first reaches CLM's "
        "final loss (interpolated between evaluations) and divided by CLM's cost for its whole "
        f"run ({clm['tokens']:,.0f} tokens, {clm['flops_train']:.3g} FLOPs, "
        f"{clm['seconds_train']:.1f} s): below 1 is cheaper than CLM. Every arm ran the same "
        f"optimizer steps of {cfg['batch_size']}x{cfg['seq_len']} tokens from the same "
        "initialisation and seed, so the same trained tokens. Training FLOPs: 6·N per trained "
        f"token, plus 2·N per candidate token for RHO-LOSS (forward-only, {cfg['candidate_factor']}"
        " candidates per trained window). Total FLOPs add, for arms that use reference losses "
        "(all but CLM), the reference model's training (6·N_ref per token) and the scoring of "
        "the corpus (2·N_ref per token); wall time likewise (plus the pruning for pruned arms). "
        f"Pruned arms train on the {cfg['prune_keep']:.0%} of the corpus windows with the "
        "lowest mean reference loss, repeated to fill the budget.",
    ]


def _fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


def report_markdown(r: dict, quick: bool, dynamics_table: str = "") -> str:
    sel = r["selection"]
    cmd = "rho demo --quick" if quick else "rho demo"
    speed = r["speedup_tokens_to_clm_final"]
    lines = [
        "# rho demo: Selective Language Modeling vs plain training",
        "",
        f"Reproduce: `{cmd}` (seed {r['config']['seed']}, preset `{r['config']['preset']}`, "
        f"ratio {r['config']['ratio']}).",
        "",
        "## Held-out math loss (nats/token)",
        "",
        "| run | final held-out loss |",
        "|---|---|",
        f"| CLM (all tokens) | {r['clm_final_heldout_loss']:.4f} |",
        f"| SLM (top {r['config']['ratio']:.0%} by excess loss) "
        f"| {r['slm_final_heldout_loss']:.4f} |",
        f"| reference model (trained on curated math) | {r['reference_heldout_loss']:.4f} |",
        "",
        f"Both runs saw {r['training_tokens']:,.0f} training tokens from the same initialisation "
        "and data order. ",
        (
            f"SLM reached CLM's final held-out loss after {r['slm_tokens_to_clm_final']:,.0f} "
            f"tokens: **{speed:.2f}x** fewer tokens than CLM."
            if speed
            else "SLM did not reach CLM's final held-out loss within the budget."
        ),
        "",
        "![held-out loss curves](curves.png)",
        "",
        "## Compute to reach CLM's final held-out loss (ratio to CLM)",
        "",
        arms_markdown(r),
        "",
        *arms_explained(r),
        "",
    ]
    if len(r["arms"]) > 2:
        lines += ["![held-out loss by arm](arms.png)", ""]
    if sel:
        lines += [
            "## Which tokens SLM selects",
            "",
            f"Measured by re-scoring {r['config']['sample_windows']} corpus windows with each SLM "
            f"checkpoint ({len(sel['checkpoints'])}) and selecting as training does.",
            "",
        ]
    if "selection_rate_noise" in sel:
        lines += [
            "| | value |",
            "|---|---|",
            f"| share of noise tokens in the sample | {sel['noise_fraction']:.1%} |",
            f"| selection rate of noise tokens | {sel['selection_rate_noise']:.1%} |",
            f"| selection rate of clean tokens | {sel['selection_rate_clean']:.1%} |",
            f"| precision of 'selected = clean' | {sel['clean_precision']:.1%} |",
            f"| recall of clean tokens | {sel['clean_recall']:.1%} |",
            "",
        ]
    if "selected_fraction_by_domain" in sel:
        lines += ["| document domain | selected fraction |", "|---|---|"]
        lines += [f"| {k} | {v:.1%} |" for k, v in sel["selected_fraction_by_domain"].items()]
        lines.append("")
    if sel:
        lines += _analysis_markdown(dynamics_table)
    lines += [
        "## Time (seconds)",
        "",
        " · ".join(f"{k} {v}" for k, v in r["seconds"].items()),
        "",
        "## Commands behind it",
        "",
        "```bash",
        "rho tokenize corpus.jsonl.gz --out stores/corpus --train-tokenizer "
        f"{r['config']['vocab']}",
        "rho tokenize curated.jsonl.gz --out stores/curated --tokenizer stores/corpus/tokenizer",
        "rho tokenize heldout.jsonl.gz --out stores/heldout --tokenizer stores/corpus/tokenizer",
        f"rho train --selection none --tokens stores/curated --preset {r['config']['preset']} "
        "--output_dir runs/reference ...",
        "rho score --model runs/reference --tokens stores/corpus --out stores/corpus_ref_losses "
        f"--seq-len {r['config']['seq_len']}",
        "rho train --selection none --tokens stores/corpus --eval_tokens stores/heldout "
        "--output_dir runs/clm ...",
        f"rho train --selection token --ratio {r['config']['ratio']} --tokens stores/corpus "
        "--ref_losses stores/corpus_ref_losses --output_dir runs/slm ...",
        *_arm_commands(r),
        "```",
        "",
    ]
    return "\n".join(lines)


def _arm_commands(r: dict) -> list[str]:
    cfg, arms, lines = r["config"], r["arms"], []
    if "pruned-clm" in arms or "pruned-slm" in arms:
        lines.append(
            "rho prune --tokens stores/corpus --losses stores/corpus_ref_losses --unit window "
            f"--by reference --keep {cfg['prune_keep']} --out stores/pruned"
        )
    if "pruned-clm" in arms:
        lines.append("rho train --selection none --tokens stores/pruned/tokens ... "
                     "--output_dir runs/pruned-clm")  # fmt: skip
    if "pruned-slm" in arms:
        lines.append(f"rho train --selection token --ratio {cfg['ratio']} --tokens "
                     "stores/pruned/tokens --ref_losses stores/pruned/ref_losses ... "
                     "--output_dir runs/pruned-slm")  # fmt: skip
    online = {"rholoss": "sample", "rholoss+token": f"sample+token --ratio {cfg['ratio']}"}
    for arm, selection in online.items():
        if arm in arms:
            lines.append(
                f"rho train --selection {selection} --candidate_factor {cfg['candidate_factor']} "
                f"--tokens stores/corpus --ref_losses stores/corpus_ref_losses ... "
                f"--output_dir runs/{arm}"
            )
    return lines


def _analysis_markdown(dynamics_table: str) -> list[str]:
    return [
        "Passages with the selected tokens highlighted: [selected.html](selected.html).",
        "Loss of the selected and dropped tokens under SLM and CLM, and the perplexity of each "
        "checkpoint's selection at every checkpoint (the paper's Figures 6 and 8): "
        "[analysis/selection/selection.md](analysis/selection/selection.md).",
        "",
        "![selected vs unselected](analysis/selection/fig6_selected_unselected.png)",
        "",
        "## Token-loss dynamics on held-out text (the paper's Figure 3)",
        "",
        "Each held-out token's loss across SLM checkpoints, classified by the paper's rule "
        "([analysis/dynamics/dynamics.md](analysis/dynamics/dynamics.md)):",
        "",
        dynamics_table,
        "",
        "![loss per category](analysis/dynamics/fig3a_categories.png)",
        "",
    ]


def summary(r: dict, out: Path) -> str:
    sel = r["selection"]
    speed = r["speedup_tokens_to_clm_final"]
    lines = [
        "=" * 72,
        f"rho demo ({r['mode']}): {r['training_tokens']:,.0f} training tokens per run, "
        f"{sum(r['seconds'].values()):.0f}s",
        f"  held-out math loss   CLM {r['clm_final_heldout_loss']:.4f}   "
        f"SLM {r['slm_final_heldout_loss']:.4f}   reference {r['reference_heldout_loss']:.4f}",
        f"  SLM reached CLM's final loss with {_fmt(speed, '.2f')}x fewer tokens",
    ]
    if "selection_rate_noise" in sel:
        lines.append(
            f"  selection rate: noise tokens {sel['selection_rate_noise']:.1%}, "
            f"clean tokens {sel['selection_rate_clean']:.1%}"
        )
    if len(r["arms"]) > 2:
        lines += ["  to reach CLM's final loss, as a ratio to CLM (below 1 = cheaper):"]
        lines += ["  " + line for line in arms_markdown(r).splitlines()]
    lines += [f"  report: {out / 'report.md'}  (curves.png, selected.html, results.json)", "=" * 72]
    return "\n".join(lines)
