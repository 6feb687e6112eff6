"""Export a trained SAE to SAELens's or sparsify's on-disk format, optionally uploading it to the Hugging Face Hub.

    python -m sae.export RUN_DIR --format saelens OUT [--push-to-hub USER/REPO]

SAELens also reads `sparsity.safetensors` (log10 feature densities, for dashboards and Neuronpedia): it comes
from the run's evaluation (`evaluate.py`'s density part, on training activations) when that was computed for
these weights, else from the run's activation cache (`--density-tokens` of them, harvested if missing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sae.core.errors import ConfigError
from sae.export.hub import push_to_hub
from sae.export.write import WRITERS, export
from sae.formats.interop import CONFIG


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m sae.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a training run directory or its sae/ directory")
    parser.add_argument("out", help="the folder to write (must be absent or empty unless --overwrite)")
    parser.add_argument("--format", required=True, choices=sorted(WRITERS))
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload OUT to this Hugging Face model repo")
    parser.add_argument("--path-in-repo", help="folder inside the repo (default: the SAE's hook name)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument(
        "--density-tokens",
        type=int,
        default=100_000,
        help="tokens of the activation cache for sparsity.safetensors when no evaluation has it",
    )
    parser.add_argument("--no-sparsity", action="store_true", help="write no sparsity.safetensors")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    args = parser.parse_args(argv)
    try:
        out = export(
            args.run_dir,
            args.format,
            args.out,
            sparsity=not args.no_sparsity,
            density_tokens=args.density_tokens,
            overwrite=args.overwrite,
        )
        print(f"wrote {args.format} SAE to {out}")
        if args.push_to_hub:
            path_in_repo = args.path_in_repo or json.loads((out / CONFIG).read_text()).get("hook_name")
            push_to_hub(out, args.push_to_hub, path_in_repo, args.private)
            print(f"uploaded {out} to https://huggingface.co/{args.push_to_hub} ({path_in_repo or '/'})")
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    return out


if __name__ == "__main__":
    main()
