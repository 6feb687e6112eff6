"""The feature browser: per-unit data from one held-out pass (data), logit weights (logits),
ablation, pinned sampling (steering), the static site (site), the local rating server (server) and
the manual rubric (rubric). Entry points: `evaluate.py stage=dashboard | serve | rubric_report`."""
