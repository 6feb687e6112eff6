"""Sweeps: grouping runs that read the same activations into one job, and the report that compares a sweep's runs."""
