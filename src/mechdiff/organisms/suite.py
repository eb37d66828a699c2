"""The benchmark suites: which organisms and null controls, built for which seeds."""

from __future__ import annotations

from pathlib import Path

from mechdiff.organisms.build import (
    NULL_KINDS,
    BuildSettings,
    OrganismSpec,
    build_one,
    make_world,
)
from mechdiff.organisms.objectives import OBJECTIVE_TYPES

SUITES = ("quick", "full")


def suite_specs(suite: str) -> list[OrganismSpec]:
    """The pairs of ``suite``.

    quick: four organisms of four types (full and LoRA, GPT-2-like) and three null controls,
    the CI-sized check. full: every objective type as a full fine-tune and a LoRA on both
    shapes (GPT-2-like, Llama-like with grouped-query attention), diluted variants of three
    types, and every null control on both shapes.
    """
    if suite == "quick":
        return [OrganismSpec("backdoor_full", "backdoor", "full"), OrganismSpec("taboo_lora", "taboo", "lora"),
                OrganismSpec("persona_full", "persona", "full"), OrganismSpec("fact_lora", "fact", "lora"),
                OrganismSpec("null_fp16", "null", "fp16"), OrganismSpec("null_continued", "null", "continued"),
                OrganismSpec("null_lora_zero", "null", "lora_zero")]
    if suite != "full":
        raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    specs = []
    for arch in ("gpt2", "llama"):
        specs += [OrganismSpec(f"{kind}_{method}", kind, method, arch)
                  for kind in OBJECTIVE_TYPES for method in ("full", "lora")]
        specs += [OrganismSpec(f"{kind}_mixed", kind, "full", arch, mixed=True) for kind in ("backdoor", "fact", "persona")]
        specs += [OrganismSpec(f"null_{kind}", "null", kind, arch) for kind in NULL_KINDS]
    return specs


def build_suite(suite: str, cache: Path, seeds: list[int], settings: BuildSettings | None = None,
                progress: bool = False) -> list[dict]:
    """Build (or reuse from ``cache``) every pair of ``suite`` for each seed; returns their manifests."""
    out = []
    for seed in seeds:
        world = make_world(seed, settings)
        for spec in suite_specs(suite):
            manifest = build_one(world, spec, Path(cache) / f"seed{seed}")
            out.append({**manifest, "seed": seed})
            if progress:
                import sys

                print(f"built {spec.arch}/{spec.name} seed {seed}", file=sys.stderr)
    return out
