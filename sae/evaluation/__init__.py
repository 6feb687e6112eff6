"""Measuring an SAE: spliced cross-entropy, activation statistics, density, and evaluate.py's metrics stage."""
