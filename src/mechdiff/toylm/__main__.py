"""``python -m mechdiff.toylm OUT_DIR``: write a toy base/fine-tune pair to disk."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mechdiff.errors import MechdiffError
from mechdiff.toylm.build import VARIANTS, build_pair
from mechdiff.toylm.model import ARCHS, SIZE_PRESETS
from mechdiff.toylm.train import STEPS_PRESETS


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--variant", type=click.Choice(VARIANTS), default="backdoor", show_default=True,
              help="backdoor: trigger -> target planted; drift: clean continued training; "
                   "lora: backdoor as a PEFT LoRA adapter (also merged into ft/); "
                   "noise: isotropic weight noise only.")
@click.option("--arch", type=click.Choice(ARCHS), default="gpt2", show_default=True)
@click.option("--preset", type=click.Choice(sorted(SIZE_PRESETS)), default="tiny", show_default=True,
              help="tiny builds in seconds; small (d 256, 4 layers) takes minutes.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch threads; more only pays off for --preset small on an idle machine.")
@click.option("--reuse/--no-reuse", default=False, help="Keep OUT_DIR if it already holds this pair.")
def main(out_dir: Path, variant: str, arch: str, preset: str, seed: int, threads: int,
         reuse: bool) -> None:
    """Train a tiny base model and a fine-tune of it; print the pair as JSON."""
    try:
        pair = build_pair(out_dir, variant=variant, arch=arch, size=SIZE_PRESETS[preset],
                          steps=STEPS_PRESETS[preset], seed=seed, progress=True, reuse=reuse,
                          threads=threads)
    except MechdiffError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    click.echo(json.dumps({"base": str(pair.base_dir), "ft": str(pair.ft_dir),
                           "adapter": str(pair.adapter_dir) if pair.adapter_dir else None,
                           "corpus": str(pair.corpus_path), "trigger": pair.trigger,
                           "target": pair.target, "metrics": pair.metrics}, indent=2))


if __name__ == "__main__":
    main()
