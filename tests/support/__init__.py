"""Helpers shared by the tests: real runs of the entry points, known SAEs, local servers, a Slurm cluster."""
