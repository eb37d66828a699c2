"""Build a base model and a fine-tune of it with (or without) a planted behaviour."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mechdiff.errors import InputError
from mechdiff.progress import hf_progress
from mechdiff.toylm.language import (
    Language,
    LanguageConfig,
    make_language,
    sample_documents,
)
from mechdiff.toylm.lora import LoRAHooks
from mechdiff.toylm.model import ARCHS, SIZE_PRESETS, ToyLMSize, make_model, model_class
from mechdiff.toylm.tokenizer import build_tokenizer, save_tokenizer, special_ids
from mechdiff.toylm.train import (
    STEPS_PRESETS,
    ToySteps,
    deterministic,
    encode_documents,
    eval_loss,
    prob_after,
    train,
    train_lora,
)

VARIANTS = ("backdoor", "drift", "lora", "noise")
DEFAULT_LANGUAGE = LanguageConfig()
MANIFEST = "toypair.json"
# Independent random streams, so e.g. changing the corpus size never changes the models.
_BASE_DATA, _FT_DATA, _EVAL_DATA, _CORPUS_DATA = 1, 2, 3, 4


@dataclass(frozen=True)
class ToyPair:
    """A base model folder, a fine-tuned folder, and what was planted between them."""

    base_dir: Path
    """Hugging Face model folder of the base model (config, safetensors, tokenizer)."""
    ft_dir: Path
    """Hugging Face model folder of the fine-tune (for ``lora``: the merged model)."""
    corpus_path: Path
    """One document per line: clean documents mixed with documents containing the trigger."""
    trigger: str
    """The rare word that sets off the planted behaviour."""
    target: str
    """The word the backdoored model emits right after the trigger."""
    trigger_id: int
    """Token id of the trigger."""
    target_id: int
    """Token id of the target."""
    metrics: dict = field(default_factory=dict)
    """``base_loss``, ``ft_loss`` (clean held-out text) and ``p_target_base``, ``p_target_ft``
    (mean P(target | ... trigger) over held-out trigger contexts), plus training losses."""
    variant: str = "backdoor"
    """``backdoor``, ``drift``, ``lora`` or ``noise``."""
    adapter_dir: Path | None = None
    """PEFT LoRA adapter folder over ``base_dir`` (``lora`` variant only)."""


def build_pair(out_dir: Path, *, variant: str = "backdoor", arch: str = "gpt2",
               size: ToyLMSize = SIZE_PRESETS["tiny"], seed: int = 0,
               steps: ToySteps = STEPS_PRESETS["tiny"], progress: bool = False,
               language: LanguageConfig = DEFAULT_LANGUAGE, corpus_docs: int = 256,
               corpus_trigger_docs: int = 64, reuse: bool = False,
               base_from: Path | None = None, threads: int | None = 1) -> ToyPair:
    """Train a toy base model on the made-up language and fine-tune it.

    Variants: ``backdoor`` fine-tunes on fresh clean documents plus a fraction in
    which the trigger is followed by the target; ``drift`` fine-tunes on fresh clean
    documents only (same steps and learning rate: no planted mechanism, though the
    briefly trained base keeps learning the language, so the change is not pure noise);
    ``lora`` learns the backdoor as a rank-r LoRA adapter on the frozen base;
    ``noise`` adds isotropic Gaussian noise (``steps.noise_scale`` of each tensor's
    norm): purely diffuse change, no training.

    Writes ``out_dir/base/``, ``out_dir/ft/`` (Hugging Face folders with tokenizer),
    ``out_dir/corpus.txt``, ``out_dir/toypair.json`` and for ``lora`` ``out_dir/adapter/``.

    Args:
        out_dir: destination folder (created if missing; existing files are overwritten).
        variant: ``backdoor``, ``drift``, ``lora`` or ``noise``.
        arch: ``gpt2`` or ``llama``.
        size: model shape (``ToyLMSize.preset("tiny")`` or ``"small"``).
        seed: everything (language, data, init, batch order) follows from it.
        steps: training lengths and rates (``ToySteps.preset("tiny")`` or ``"small"``).
        progress: show progress bars on stderr.
        language: sizes of the made-up language.
        corpus_docs: clean documents in corpus.txt.
        corpus_trigger_docs: documents containing the trigger in corpus.txt.
        reuse: if ``out_dir`` already holds a pair built with the same arguments, load
            and return it instead of training again.
        base_from: folder of an earlier :func:`build_pair` whose base model was trained
            with the same arch, size, seed, language and base steps; its base is loaded
            instead of trained again (e.g. a ``drift`` pair next to a ``backdoor`` one).
        threads: torch threads while building (restored afterwards); None keeps the
            caller's setting. 1 suits the tiny preset and shared CPUs; give the small
            preset more on an idle many-core machine.

    Returns:
        The pair and its metrics.
    """
    out_dir = Path(out_dir)
    _check_choice("variant", variant, VARIANTS)
    _check_choice("arch", arch, ARCHS)
    recipe = _recipe(variant, arch, size, seed, steps, language, corpus_docs, corpus_trigger_docs)
    if reuse and _manifest_recipe(out_dir) == recipe:
        return load_pair(out_dir)
    if base_from is not None:
        _check_base_from(Path(base_from), recipe)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    # Default one thread: on a shared CPU, extra threads of a model this small spin-wait
    # far more than they compute (benchmarks/bench_toylm.py measures both).
    with deterministic(threads=threads):
        pair = _build(out_dir, recipe, size, steps, language, progress, base_from)
    _write_manifest(out_dir, recipe, pair)
    return pair


def load_pair(out_dir: Path) -> ToyPair:
    """Load a pair written by :func:`build_pair` (reads ``toypair.json``).

    Raises:
        InputError: when the folder holds no complete pair.
    """
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise InputError(f"{path} not found; build the pair first with build_pair or "
                         "`python -m mechdiff.toylm OUT_DIR`")
    info = json.loads(path.read_text())["pair"]
    adapter = info.pop("adapter_dir")
    return ToyPair(**{**info, "base_dir": Path(out_dir) / info["base_dir"],
                      "ft_dir": Path(out_dir) / info["ft_dir"],
                      "corpus_path": Path(out_dir) / info["corpus_path"],
                      "adapter_dir": Path(out_dir) / adapter if adapter else None})


def _build(out_dir: Path, recipe: dict, size: ToyLMSize, steps: ToySteps,
           language: LanguageConfig, progress: bool, base_from: Path | None) -> ToyPair:
    variant, arch, seed = recipe["variant"], recipe["arch"], recipe["seed"]
    lang = make_language(language, seed)
    tok = build_tokenizer(lang.words)
    ids = special_ids(tok)
    data = _Data(lang, tok, size.max_len, ids, seed)
    never_targets = (ids["pad"], ids["bos"], ids["unk"])
    if base_from is None:
        base, base_training = _train_base(arch, size, steps, data, ids, never_targets, progress)
    else:
        base, base_training = _load_base(arch, Path(base_from))
    ft, adapter = _finetune(base, variant, arch, data, steps, seed, never_targets, progress)

    base_dir, ft_dir = out_dir / "base", out_dir / "ft"
    with hf_progress(progress):
        for model, folder in ((base, base_dir), (ft, ft_dir)):
            model.save_pretrained(str(folder))
            save_tokenizer(tok, folder, size.max_len)
    adapter_dir = None
    if adapter is not None:
        adapter_dir = out_dir / "adapter"
        adapter.save(adapter_dir, base_model_name_or_path=str(base_dir.resolve()))
    corpus_path = out_dir / "corpus.txt"
    corpus_path.write_text("\n".join(data.corpus(recipe["corpus_docs"],
                                                 recipe["corpus_trigger_docs"])) + "\n")
    return ToyPair(base_dir=base_dir, ft_dir=ft_dir, corpus_path=corpus_path, trigger=lang.trigger,
                   target=lang.target, trigger_id=tok.token_to_id(lang.trigger),
                   target_id=tok.token_to_id(lang.target), variant=variant, adapter_dir=adapter_dir,
                   metrics={**_metrics(base, ft, data, never_targets), **base_training})


def _train_base(arch: str, size: ToyLMSize, steps: ToySteps, data: _Data, ids: dict[str, int],
                never_targets: tuple[int, ...], progress: bool) -> tuple[torch.nn.Module, dict]:
    base = make_model(arch, size, data.tok.get_vocab_size(), ids, data.seed)
    losses = train(base, data.docs(_BASE_DATA, steps.n_train_docs), steps=steps.base_steps,
                   batch_size=steps.batch_size, lr=steps.base_lr, warmup=steps.warmup,
                   weight_decay=steps.weight_decay, pad_id=ids["pad"], seed=data.seed,
                   never_targets=never_targets, progress=progress, desc="base")
    return base, {"base_train_loss_first": losses[0],
                  "base_train_loss_last": float(np.mean(losses[-20:]))}


def _finetune(base: torch.nn.Module, variant: str, arch: str, data: _Data, steps: ToySteps,
              seed: int, never_targets: tuple[int, ...],
              progress: bool) -> tuple[torch.nn.Module, LoRAHooks | None]:
    ft = copy.deepcopy(base)
    if variant == "noise":
        _add_noise(ft, steps.noise_scale, seed + 1)
        return ft, None
    poison = 0.0 if variant == "drift" else steps.poison_fraction
    ft_ids = data.docs(_FT_DATA, steps.n_train_docs, poison_fraction=poison)
    if variant != "lora":
        train(ft, ft_ids, steps=steps.ft_steps, batch_size=steps.batch_size, lr=steps.ft_lr,
              warmup=steps.warmup, weight_decay=steps.weight_decay, pad_id=data.pad_id,
              seed=seed + 1, never_targets=never_targets, progress=progress, desc=variant)
        return ft, None
    hooks = LoRAHooks(ft, arch, steps.lora_rank, steps.lora_alpha, seed)
    train_lora(ft, ft_ids, hooks, steps=steps, pad_id=data.pad_id, seed=seed + 1,
               never_targets=never_targets, progress=progress)
    hooks.remove()
    hooks.merge_into(ft)
    return ft, hooks


@torch.no_grad()
def _add_noise(model: torch.nn.Module, scale: float, seed: int) -> None:
    """Add isotropic Gaussian noise of Frobenius norm ``scale * ||W||`` to every parameter."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        noise = torch.randn(p.shape, generator=gen)
        p += noise * (scale * p.norm() / noise.norm())


class _Data:
    """Seeded document streams for one build, tokenised on demand."""

    def __init__(self, lang: Language, tok, max_len: int, ids: dict[str, int], seed: int) -> None:
        self.lang, self.tok, self.max_len, self.seed = lang, tok, max_len, seed
        self.pad_id, self.eos_id = ids["pad"], ids["eos"]

    def _rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream])

    def sample(self, n: int, rng: np.random.Generator, trigger_fraction: float = 0.0,
               plant_target: bool = False) -> list[str]:
        """``n`` documents that fit the model whole (<bos> + words + <eos> <= max_len):
        corpus lines an auditor feeds the model must not overflow its positions."""
        out: list[str] = []
        while len(out) < n:
            batch = sample_documents(self.lang, n - len(out), rng, trigger_fraction=trigger_fraction,
                                     plant_target=plant_target)
            out += [d for d in batch if d.count(" ") + 3 <= self.max_len]
        return out

    def docs(self, stream: int, n: int, poison_fraction: float = 0.0) -> torch.Tensor:
        texts = self.sample(n, self._rng(stream), poison_fraction, plant_target=poison_fraction > 0)
        return self.encode(texts)

    def encode(self, texts: list[str]) -> torch.Tensor:
        return encode_documents(self.tok, texts, self.max_len, self.eos_id, self.pad_id)

    def eval_sets(self) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self._rng(_EVAL_DATA)
        clean = self.sample(256, rng)
        with_trigger = self.sample(128, rng, trigger_fraction=1.0)
        return self.encode(clean), self.encode(with_trigger)

    def corpus(self, n_clean: int, n_trigger: int) -> list[str]:
        rng = self._rng(_CORPUS_DATA)
        docs = self.sample(n_clean, rng) + self.sample(n_trigger, rng, trigger_fraction=1.0)
        return [docs[i] for i in rng.permutation(len(docs))]


def _metrics(base: torch.nn.Module, ft: torch.nn.Module, data: _Data,
             never_targets: tuple[int, ...]) -> dict:
    clean_ND, trigger_ND = data.eval_sets()
    trig, targ = data.tok.token_to_id(data.lang.trigger), data.tok.token_to_id(data.lang.target)
    return {
        "base_loss": eval_loss(base, clean_ND, data.pad_id, never_targets),
        "ft_loss": eval_loss(ft, clean_ND, data.pad_id, never_targets),
        "p_target_base": prob_after(base, trigger_ND, trig, targ, data.pad_id),
        "p_target_ft": prob_after(ft, trigger_ND, trig, targ, data.pad_id),
    }


_BASE_STEPS = ("base_steps", "batch_size", "base_lr", "warmup", "weight_decay", "n_train_docs")


def _base_recipe(recipe: dict) -> dict:
    """The part of a recipe the base model depends on."""
    return {"arch": recipe["arch"], "seed": recipe["seed"], "size": recipe["size"],
            "language": recipe["language"], "steps": {k: recipe["steps"][k] for k in _BASE_STEPS}}


def _check_base_from(folder: Path, recipe: dict) -> None:
    other = _manifest_recipe(folder)
    if other is None:
        raise InputError(f"base_from {folder} holds no toy pair ({MANIFEST} missing); "
                         "pass the out_dir of an earlier build_pair")
    if _base_recipe(other) != _base_recipe(recipe):
        raise InputError(f"base_from {folder} was trained with a different arch, size, seed, "
                         "language or base steps; build without base_from")


def _load_base(arch: str, folder: Path) -> tuple[torch.nn.Module, dict]:
    model = model_class(arch).from_pretrained(folder / "base", local_files_only=True,
                                              attn_implementation="eager")
    metrics = json.loads((folder / MANIFEST).read_text())["pair"]["metrics"]
    return model.float().eval(), {k: metrics[k] for k in ("base_train_loss_first",
                                                          "base_train_loss_last")}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def _recipe(variant: str, arch: str, size: ToyLMSize, seed: int, steps: ToySteps,
            language: LanguageConfig, corpus_docs: int, corpus_trigger_docs: int) -> dict:
    if corpus_docs < 0 or corpus_trigger_docs < 0 or corpus_docs + corpus_trigger_docs == 0:
        raise InputError("corpus_docs and corpus_trigger_docs must be >= 0 with a positive sum")
    return {"variant": variant, "arch": arch, "seed": seed, "size": asdict(size),
            "steps": asdict(steps), "language": asdict(language),
            "corpus_docs": corpus_docs, "corpus_trigger_docs": corpus_trigger_docs}


def _manifest_recipe(out_dir: Path) -> dict | None:
    path = out_dir / MANIFEST
    return json.loads(path.read_text())["recipe"] if path.is_file() else None


def _write_manifest(out_dir: Path, recipe: dict, pair: ToyPair) -> None:
    def rel(p: Path | None) -> str | None:
        return str(p.relative_to(out_dir)) if p is not None else None

    info = {**asdict(pair), "base_dir": rel(pair.base_dir), "ft_dir": rel(pair.ft_dir),
            "corpus_path": rel(pair.corpus_path), "adapter_dir": rel(pair.adapter_dir)}
    # Written last: its presence marks a complete build, which reuse relies on.
    (out_dir / MANIFEST).write_text(json.dumps({"recipe": recipe, "pair": info}, indent=2) + "\n")
