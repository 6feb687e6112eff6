"""Plumbing every stage shares: errors, config checks, atomic files, plots, the experiment logger.

Nothing here imports a stage of the pipeline, so every stage may import it.
"""
