"""Evaluation of checkpoints (`rho eval`): held-out loss per domain (heldout), few-shot
exact-match tasks (fewshot, answers, tasks, champ), the lm-evaluation-harness bridge
(lm_eval_bridge), and the results files and ``--compare`` (results); run holds the order of
the steps, and rho.commands.eval the options.
"""
