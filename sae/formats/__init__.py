"""SAEs on disk: this project's format (native.py), SAELens's and sparsify's (interop.py), and the training
settings a saved SAE records (run_config.py)."""
