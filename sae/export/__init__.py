"""Export a trained SAE to SAELens or sparsify, and upload it to the Hugging Face Hub (`python -m sae.export`)."""
