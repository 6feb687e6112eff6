"""Training one SAE: the Lightning module, its settings, the run directory's identity, and neuron resampling."""
