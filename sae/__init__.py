"""Sparse autoencoders on language-model activations (Towards Monosemanticity, reproduced and extended).

The package follows the data's path, each folder one stage:

    lm, text        the language model and the text it reads
    activations     hook activations: harvested, cached or streamed, batched
    architectures   the SAEs themselves (plain torch) and the sparse training kernel
    formats         SAEs on disk: this project's format, SAELens's and sparsify's
    training        the training loop's module, settings, run identity and resampling
    evaluation      spliced cross-entropy, activation statistics, evaluate.py's metrics
    interp          automated interpretability (explain, simulate, score)
    dashboard       the feature browser, its rating server and the manual rubric
    export          SAELens/sparsify export and Hugging Face Hub upload
    sweeps          grouped sweeps and the sweep report
    core            plumbing every stage shares (errors, checks, files, plots, logging)

Lightning callbacks live in the top-level `callbacks` package; entry points are train.py and evaluate.py.
"""

from sae.architectures import ARCHITECTURES, SparseAutoencoder
from sae.formats.native import load_sae, save_sae

__all__ = ["ARCHITECTURES", "SparseAutoencoder", "load_sae", "save_sae"]
