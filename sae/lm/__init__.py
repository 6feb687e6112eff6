"""The language model an SAE reads: loading it (from the hub, a directory or a package) and its hooks."""
