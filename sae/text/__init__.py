"""The text an SAE learns from: sources of documents, the held-out split, and token contexts."""
