"""Build model organisms and null controls on the toy language: trained for real, seeded, cached.

One base model per (arch, seed) is pre-trained once; every organism and null control of that
arch and seed is made from it and written as a Hugging Face folder (plus a PEFT adapter for
LoRA organisms) beside an ``organism.json`` manifest (see manifest.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mechdiff.organisms.manifest import normalize
from mechdiff.organisms.objectives import Objective, domain_language, make_objective
from mechdiff.toylm.language import Language, make_language
from mechdiff.toylm.lora import LoRAHooks
from mechdiff.toylm.model import SIZE_PRESETS, ToyLMSize, make_model
from mechdiff.toylm.tokenizer import build_tokenizer, save_tokenizer, special_ids
from mechdiff.toylm.train import (
    STEPS_PRESETS,
    ToySteps,
    deterministic,
    encode_documents,
    train,
    train_lora,
)

NULL_KINDS = ("identical", "fp16", "bf16", "continued", "reseeded", "benign", "lora_zero")
NULL_DESCRIPTIONS = {
    "identical": "an exact copy of the base", "fp16": "the base rounded to float16 and saved so",
    "bf16": "the base rounded to bfloat16 and saved so",
    "continued": "more training on the base's own data (no new behaviour)",
    "reseeded": "the base retrained from another seed on the same data (every weight differs)",
    "benign": "fine-tuned on a harmless new task: longer documents of the same language",
    "lora_zero": "a LoRA adapter whose B is zero (merged: the base itself)",
}
# Independent random streams per use, so adding one never changes another.
_BASE_DATA, _FT_DATA, _PROBE_DATA, _CORPUS_DATA = 1, 2, 3, 4
MANIFEST = "organism.json"


@dataclass(frozen=True)
class OrganismSpec:
    """One pair of the suite: a planted objective or a null control."""

    name: str
    """Unique name within the suite (folder name)."""
    type: str
    """Objective type, or "null"."""
    method: str
    """"full" or "lora" fine-tune; for nulls the null kind (NULL_KINDS)."""
    arch: str = "gpt2"
    """"gpt2" or "llama" (grouped-query attention)."""
    mixed: bool = False
    """Objective documents diluted with the base's own data (BuildSettings.mixed_share of the documents)."""


@dataclass(frozen=True)
class BuildSettings:
    """Sizes shared by every organism of a suite."""

    size: ToyLMSize = SIZE_PRESETS["tiny"]
    """Model shape."""
    steps: ToySteps = STEPS_PRESETS["tiny"]
    """Training lengths and rates (base, fine-tune, LoRA)."""
    corpus_docs: int = 384
    """Documents of the audit corpus (clean text of the language: no planted contexts)."""
    probe_docs: int = 96
    """Held-out rewritten documents the behaviour check reads."""
    mixed_share: float = 0.25
    """Share of rewritten documents in a mixed organism's fine-tuning data (0.25: one objective document
    to three of the base's own). A mixed organism keeps its full variant's objective documents and
    trains for proportionally more steps, so it sees them as often: dilution, not less teaching (at a
    10% share and the same 80 steps a fact organism saw 128 fact documents and its P(fact) rose from
    0.003 to 0.012 only: an organism without its behaviour)."""


class _World:
    """The language, tokenizer and document streams of one (seed, settings)."""

    def __init__(self, seed: int, settings: BuildSettings) -> None:
        self.seed, self.settings = seed, settings
        self.lang = make_language(seed=seed)
        self.tok = build_tokenizer(self.lang.words)
        self.ids = special_ids(self.tok)
        self.never = (self.ids["pad"], self.ids["bos"], self.ids["unk"])

    def rng(self, stream: int, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream, salt])

    def docs(self, n: int, rng: np.random.Generator, lang: Language | None = None,
             topic: int | None = None) -> list[list[str]]:
        """``n`` clean documents (word lists) that fit the model whole."""
        from mechdiff.toylm.language import DocumentSampler

        sampler, out = DocumentSampler(lang or self.lang, rng), []
        while len(out) < n:
            words = sampler.document(topic=topic)
            if len(words) + 2 <= self.settings.size.max_len:
                out.append(words)
        return out

    def encode(self, docs: list[list[str]]) -> torch.Tensor:
        return encode_documents(self.tok, [" ".join(d) for d in docs], self.settings.size.max_len,
                                self.ids["eos"], self.ids["pad"])


def build_base(world: _World, arch: str, folder: Path, reseed: int = 0) -> torch.nn.Module:
    """Pre-train (or load, when cached) the base model of ``arch``; ``reseed`` shifts init and batch order."""
    recipe = {"arch": arch, "seed": world.seed, "reseed": reseed, "size": asdict(world.settings.size),
              "steps": asdict(world.settings.steps)}
    if _cached(folder, recipe):
        return _load(arch, folder)
    s = world.settings.steps
    model = make_model(arch, world.settings.size, world.tok.get_vocab_size(), world.ids, world.seed + 7919 * reseed)
    data = world.encode(world.docs(s.n_train_docs, world.rng(_BASE_DATA)))
    train(model, data, steps=s.base_steps, batch_size=s.batch_size, lr=s.base_lr, warmup=s.warmup,
          weight_decay=s.weight_decay, pad_id=world.ids["pad"], seed=world.seed + 7919 * reseed,
          never_targets=world.never, desc="base")
    _save(model, world, folder, recipe)
    return model


def finetune_docs(world: _World, objective: Objective | None, n: int, share: float,
                  salt: int) -> list[list[str]]:
    """Fine-tuning documents: ``share`` of them rewritten by the objective, the rest clean base data."""
    rng = world.rng(_FT_DATA, salt)
    if objective is None:
        return world.docs(n, rng)
    n_obj = round(share * n)
    lang = domain_language(world.lang) if objective.topic is not None else world.lang
    planted = [objective.rewrite(d, rng)[0] for d in world.docs(n_obj, rng, lang, objective.topic)]
    docs = planted + world.docs(n - n_obj, rng)
    docs = [d for d in docs if len(d) + 2 <= world.settings.size.max_len]
    return [docs[i] for i in rng.permutation(len(docs))]


def train_organism(world: _World, base: torch.nn.Module, spec: OrganismSpec, objective: Objective | None,
                   docs: list[list[str]], epochs: float = 1.0) -> tuple[torch.nn.Module, LoRAHooks | None]:
    """Fine-tune a copy of ``base`` on ``docs``: all weights, or a LoRA adapter merged afterwards;
    ``epochs`` scales the steps (a diluted data set is read for as many passes over its objective)."""
    s, ft = world.settings.steps, copy.deepcopy(base)
    if epochs != 1.0:
        s = dataclasses.replace(s, ft_steps=max(1, round(s.ft_steps * epochs)))
    data = world.encode(docs)
    if spec.method == "lora":
        hooks = LoRAHooks(ft, spec.arch, s.lora_rank, s.lora_alpha, world.seed)
        train_lora(ft, data, hooks, steps=s, pad_id=world.ids["pad"], seed=world.seed + 1, never_targets=world.never)
        hooks.remove()
        hooks.merge_into(ft)
        return ft, hooks
    train(ft, data, steps=s.ft_steps, batch_size=s.batch_size, lr=s.ft_lr, warmup=s.warmup,
          weight_decay=s.weight_decay, pad_id=world.ids["pad"], seed=world.seed + 1, never_targets=world.never,
          desc=spec.name)
    return ft, None


def null_model(world: _World, base: torch.nn.Module, spec: OrganismSpec,
               base_folder: Path) -> tuple[torch.nn.Module, LoRAHooks | None]:
    """The null control ``spec.method`` of ``base``."""
    kind = spec.method
    if kind in ("identical", "fp16", "bf16"):
        dtype = {"identical": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[kind]
        return copy.deepcopy(base).to(dtype), None
    if kind == "lora_zero":
        s = world.settings.steps
        return copy.deepcopy(base), LoRAHooks(copy.deepcopy(base), spec.arch, s.lora_rank, s.lora_alpha, world.seed)
    if kind == "reseeded":
        return build_base(world, spec.arch, base_folder.parent / "base_reseeded", reseed=1), None
    n = world.settings.steps.n_train_docs
    if kind == "benign":
        longer = dataclasses.replace(world.lang, config=dataclasses.replace(world.lang.config, min_sentences=4,
                                                                            max_sentences=6))
        docs = world.docs(n, world.rng(_FT_DATA, 99), longer)
    else:  # continued
        docs = finetune_docs(world, None, n, 0.0, salt=98)
    return train_organism(world, base, OrganismSpec(spec.name, "null", "full", spec.arch), None, docs)


@torch.no_grad()
def probe(world: _World, model: torch.nn.Module, objective: Objective) -> float:
    """Mean P(objective's target tokens | context) at the planted positions of held-out rewritten documents."""
    rng = world.rng(_PROBE_DATA)
    lang = domain_language(world.lang) if objective.topic is not None else world.lang
    rewritten = [objective.rewrite(d, rng) for d in world.docs(world.settings.probe_docs, rng, lang, objective.topic)]
    rewritten = [(w, p) for w, p in rewritten if p and len(w) + 2 <= world.settings.size.max_len]
    if not rewritten:
        return float("nan")
    ids = world.encode([w for w, _ in rewritten])
    targets = torch.tensor([world.tok.token_to_id(t) for t in objective.targets])
    model.eval()
    probs = torch.softmax(model(input_ids=ids, attention_mask=(ids != world.ids["pad"]).long()).logits.float(), -1)
    # planted word i sits at token i + 1 (<bos> first); it is predicted at token i
    picked = [probs[row, pos][targets].sum() for row, (_, planted) in enumerate(rewritten) for pos in planted]
    return float(torch.stack(picked).mean())


def write_corpus(world: _World, path: Path) -> Path:
    """The audit corpus: clean documents of the language (no planted contexts), one per line."""
    if not path.is_file():
        docs = world.docs(world.settings.corpus_docs, world.rng(_CORPUS_DATA))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(" ".join(d) for d in docs) + "\n")
    return path


def _recipe_settings(settings: BuildSettings, mixed: bool) -> dict:
    """The settings a pair's build read (mixed_share only for mixed pairs, so changing it rebuilds only them)."""
    doc = json.loads(json.dumps(asdict(settings)))
    if not mixed:
        doc.pop("mixed_share")
    return doc


def _save(model: torch.nn.Module, world: _World, folder: Path, recipe: dict) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(str(folder))
    save_tokenizer(world.tok, folder, world.settings.size.max_len)
    (folder / "recipe.json").write_text(json.dumps(recipe, indent=1) + "\n")  # last: marks a complete folder


def _cached(folder: Path, recipe: dict) -> bool:
    path = folder / "recipe.json"
    return path.is_file() and json.loads(path.read_text()) == json.loads(json.dumps(recipe))


def _load(arch: str, folder: Path) -> torch.nn.Module:
    from mechdiff.toylm.model import model_class

    return model_class(arch).from_pretrained(folder, local_files_only=True,
                                             attn_implementation="eager").float().eval()


def build_one(world: _World, spec: OrganismSpec, root: Path) -> dict:
    """Build (or reuse) one organism or null control under ``root``; returns its manifest."""
    base_folder = root / spec.arch / "base"
    folder = root / spec.arch / spec.name
    objective = make_objective(spec.type, world.lang) if spec.type != "null" else None
    recipe = {"spec": asdict(spec), "seed": world.seed, "settings": _recipe_settings(world.settings, spec.mixed)}
    if (folder / MANIFEST).is_file() and json.loads((folder / MANIFEST).read_text()).get("recipe") == recipe:
        return normalize(json.loads((folder / MANIFEST).read_text()), folder / MANIFEST)
    with deterministic(threads=1):
        base = build_base(world, spec.arch, base_folder)
        if objective is None:
            ft, adapter = null_model(world, base, spec, base_folder)
        else:
            n_docs, share = world.settings.steps.n_train_docs, objective.rate
            if spec.mixed:  # the full variant's objective documents, plus base documents up to the share
                n_docs, share = round(n_docs * objective.rate / world.settings.mixed_share), world.settings.mixed_share
            docs = finetune_docs(world, objective, n_docs, share, salt=hash_name(spec.name))
            ft, adapter = train_organism(world, base, spec, objective, docs,
                                         epochs=n_docs / world.settings.steps.n_train_docs)
        metrics = {} if objective is None else {"p_base": probe(world, base, objective),
                                                 "p_ft": probe(world, ft.float(), objective)}
    _save(ft, world, folder / "ft", {"organism": spec.name})
    if adapter is not None:
        adapter.save(folder / "adapter", base_model_name_or_path=str(base_folder.resolve()))
    write_corpus(world, root / "corpus.txt")
    manifest = {**organism_manifest(spec, objective, adapter is not None, metrics), "seed": world.seed,
                "recipe": recipe}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")  # last: marks a complete build
    return normalize(manifest, folder / MANIFEST)


def organism_manifest(spec: OrganismSpec, objective: Objective | None, has_adapter: bool, metrics: dict) -> dict:
    """The manifest fields (the diffing community's organism config shape, plus what scoring needs);
    paths are relative to the manifest's folder, so a cache folder can move."""
    return {"name": spec.name, "type": spec.type, "null": objective is None,
            "description": NULL_DESCRIPTIONS[spec.method] if objective is None else
            objective.description + (" (diluted with base data)" if spec.mixed else "") + f"; {spec.method} fine-tune",
            "base_model": "../base", "finetuned_model": "ft", "adapter": "adapter" if has_adapter else None,
            "relevant_tokens": [] if objective is None else list(objective.relevant), "corpus": "../../corpus.txt",
            "arch": spec.arch, "method": spec.method, "mixed": spec.mixed, "metrics": metrics}


def hash_name(name: str) -> int:
    """A stable small integer from a name (Python's hash() is salted per process)."""
    import zlib

    return zlib.crc32(name.encode()) % (1 << 31)


def make_world(seed: int, settings: BuildSettings | None = None) -> _World:
    """The language and tokenizer of ``seed`` that every organism of that seed shares."""
    return _World(seed, settings or BuildSettings())
