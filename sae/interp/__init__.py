"""Automated interpretability: records, explainers, simulators, scoring (Bills et al. 2023)."""
