"""Feature absorption on the first-letter task (Chanin et al. 2024, "A is for Absorption"; SAEBench, Karvonen
et al. 2025), computed offline from the model and its vocabulary.

Absorption: a latent that tracks a general feature ("starts with S") fails to fire on some inputs that have
it, because a more specific latent ("short", "snake") fires there instead and carries the feature's direction
in its decoder row. SAEBench's recipe, as run here:

1. Words: single tokens of the vocabulary whose text (one leading space aside) is all a-z/A-Z, split into
   train and test words. Each word's activation is read at the SAE's hook, on the word's token, after
   `icl_examples` in-context examples "{example} has the first letter: X" of the same split (built from token
   ids, so the word is exactly one token; what follows it in the prompt cannot change it in a causal model).
2. A linear probe per letter L on the train words: logistic regression of "starts with L" on the activation
   (one-vs-rest, balanced classes, L2 as scikit-learn's default C = 1). Its unit weight vector p̂_L is the
   letter's direction.
3. The letter's main latents: latents ranked by how much more they fire on the letter's train words than on
   the others (mean activation difference); k-sparse probes (logistic regression on the top k latents) for
   k = 1 … max_k; the main latents are the top k for the last k whose test F1 beat the previous best by more
   than `f1_jump_threshold` (k = 1 always counts). SAEBench ranks by an L1-penalised probe's weights instead.
4. On the test words of L that the probe classifies correctly (its true positives, n_tp), the candidates are
   those the k-sparse probe misses (score ≤ 0). With a_i = f_i (W_dec,i · p̂)/s, latent i's contribution to
   the reconstruction projected on the probe direction (SAEBench: f_i cos(W_dec,i, p̂), the same for unit
   decoder rows and s = 1), P = x · p̂ the activation's projection, M = Σ_{main} a_i:
   - absorption fraction: T = the sum of the 3 largest a_i > 0 over non-main latents with cos(W_dec,i, p̂)
     ≥ 0.1; 0 when M ≥ P or T < 0.4 P; 1 when M ≤ 0; else A / (A + M) with A = min(T, P − M).
   - full absorption: no main latent fires, the latent with the largest a_i has cos ≥ 0.025 with p̂, and
     its a_i ≥ 0.4 P (P > 0).
   Per letter, both are averaged over the probe's n_tp true positives (non-candidates count 0); the result
   averages over the letters with n_tp > 0.

The words, their activations and the probe depend only on the model, hook and these settings: they are
stored in one file (`probe_data_path`), so each next SAE of that model and hook costs only its own encode.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sae.core.checks import require
from sae.core.files import atomic_output, finite_or_none
from sae.lm.bridge import bos_token_id, hook_name
from sae.lm.config import ModelConfig

LETTERS = string.ascii_lowercase
VERSION = 1


@dataclass
class AbsorptionConfig:
    # Words sampled from the vocabulary's single-token alphabetic words; this fraction of them trains the probes.
    n_words: int = 1000
    train_fraction: float = 0.8
    # In-context examples before each word, from the same split (SAEBench: 10); the word is read after them.
    icl_examples: int = 10
    prompt_template: str = "{word} has the first letter:"
    batch_size: int = 32  # prompts per forward pass
    # Main latents: k-sparse probes up to max_k latents; k counts while its F1 beats the best by this much.
    max_k: int = 10
    f1_jump_threshold: float = 0.03
    # SAEBench's thresholds: an absorbing latent's cosine with the probe (fraction / full absorption), the
    # share of the probe projection the absorbing latents must carry, and how many may share it.
    absorber_cos_threshold: float = 0.1
    full_absorption_cos_threshold: float = 0.025
    projection_share_threshold: float = 0.4
    max_absorbing_latents: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.n_words >= 10, f"absorption.n_words={self.n_words} must be >= 10.")
        require(0 < self.train_fraction < 1, f"absorption.train_fraction={self.train_fraction} must be in (0, 1).")
        require(self.icl_examples >= 0, f"absorption.icl_examples={self.icl_examples} must be >= 0.")
        require(
            self.prompt_template.count("{word}") == 1,
            f"absorption.prompt_template={self.prompt_template!r} must hold {{word}} once.",
        )
        for name in ("batch_size", "max_k", "max_absorbing_latents"):
            require(getattr(self, name) >= 1, f"absorption.{name}={getattr(self, name)} must be >= 1.")
        for name in ("absorber_cos_threshold", "full_absorption_cos_threshold", "projection_share_threshold"):
            require(0 <= getattr(self, name) <= 1, f"absorption.{name}={getattr(self, name)} must be in [0, 1].")

    def words_identity(self) -> dict:
        """The settings the words, their activations and the probe depend on."""
        return {k: getattr(self, k) for k in ("n_words", "train_fraction", "icl_examples", "prompt_template", "seed")}


# ---------------------------------------------------------------------------------------------- the words


def alpha_tokens(tokenizer) -> list[tuple[int, str]]:
    """(id, text) of every single token whose text, one leading space aside, is all ASCII letters."""
    alpha = set(string.ascii_letters)
    out = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        body = text[1:] if text.startswith(" ") else text
        if body and all(c in alpha for c in body):
            out.append((token_id, text))
    return out


def letter_of(word: str) -> int:
    """Index in a-z of the word's first letter."""
    return LETTERS.index(word.strip()[0].lower())


def split_words(tokenizer, cfg: AbsorptionConfig) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """`n_words` alphabetic tokens drawn with the seed, split into train and test words."""
    vocab = alpha_tokens(tokenizer)
    words = random.Random(cfg.seed).sample(vocab, min(cfg.n_words, len(vocab)))
    cut = round(cfg.train_fraction * len(words))
    return words[:cut], words[cut:]


def icl_prompts(words, tokenizer, bos: int, cfg: AbsorptionConfig, rng: random.Random) -> list[list[int]]:
    """Token ids of BOS, `icl_examples` examples "{example} has the first letter: X" (newline-separated) drawn
    from `words` without the word itself, then the word's own token and its template prefix."""
    before, after = cfg.prompt_template.split("{word}")

    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False) if text else []

    newline, before_ids, after_ids = ids("\n"), ids(before), ids(after)
    answers = {i: ids(" " + letter.upper()) for i, letter in enumerate(LETTERS)}
    prompts = []
    for token_id, _ in words:
        others = [w for w in words if w[0] != token_id]
        examples = rng.sample(others, min(cfg.icl_examples, len(others)))
        prompt = [bos]
        for example_id, example_text in examples:
            prompt += before_ids + [example_id] + after_ids + answers[letter_of(example_text)] + newline
        prompts.append(prompt + before_ids + [token_id])
    return prompts


def layer_of(hook: str) -> int | None:
    match = re.match(r"blocks\.(\d+)\.", hook)
    return int(match.group(1)) if match else None


@torch.inference_mode()
def last_token_activations(bridge, hook: str, prompts: list[list[int]], batch_size: int) -> torch.Tensor:
    """The hook's activation at each prompt's last token, [n, d] float32 on the CPU. Shorter prompts are padded
    on the right, which a causal model's earlier positions never see."""
    layer = layer_of(hook)
    rows = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        lengths = torch.tensor([len(p) for p in batch])
        tokens = torch.full((len(batch), int(lengths.max())), batch[0][0], dtype=torch.long)
        for i, p in enumerate(batch):
            tokens[i, : len(p)] = torch.tensor(p)
        kwargs = {"stop_at_layer": layer + 1} if layer is not None else {}
        _, cache = bridge.run_with_cache(tokens.to(bridge.cfg.device), names_filter=hook, **kwargs)
        acts = cache[hook].float().cpu()
        rows.append(acts[torch.arange(len(batch)), lengths - 1].clone())
    return torch.cat(rows)


# ---------------------------------------------------------------------------------------------- probes


@dataclass
class LinearProbe:
    """score = x · weight[c] + bias[c] per class c (a letter, or one k-sparse probe's latents)."""

    weight: torch.Tensor  # [classes, d]
    bias: torch.Tensor  # [classes]

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.weight.T + self.bias


def fit_logistic(x: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> LinearProbe:
    """One-vs-rest logistic regressions of each column of `targets` ([n, classes], 0/1) on x ([n, d]): balanced
    classes and an L2 penalty ½‖w‖² on the summed loss, as scikit-learn's LogisticRegression(C=1,
    class_weight="balanced"), fitted by L-BFGS and returned in x's own units. The inputs are centred and divided
    by one overall scale (not per dimension, which would favour directions of little variance)."""
    x, targets = x.double(), targets.double()
    n = len(x)
    mean = x.mean(0)
    std = (x - mean).pow(2).mean().sqrt().clamp_min(1e-8)  # one scale for every dimension
    z = (x - mean) / std
    n_pos = targets.sum(0).clamp_min(1)
    n_neg = (n - targets.sum(0)).clamp_min(1)
    sample_weight = torch.where(targets > 0, n / (2 * n_pos), n / (2 * n_neg))  # sums to n per class
    w = torch.zeros(targets.shape[1], x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(targets.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        optimizer.zero_grad()
        logits = z @ w.T + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, weight=sample_weight, reduction="sum")
        loss = (loss + 0.5 * w.pow(2).sum()) / n
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    w, b = w.detach(), b.detach()
    return LinearProbe((w / std).float(), (b - (w * mean / std).sum(1)).float())


def f1(predicted: torch.Tensor, actual: torch.Tensor) -> float:
    tp = int((predicted & actual).sum())
    wrong = int((predicted ^ actual).sum())
    return 2 * tp / (2 * tp + wrong) if tp else 0.0


@dataclass
class SparseProbe:
    """A k-sparse probe: logistic regression on the activations of a few latents."""

    latents: list[int]
    weight: torch.Tensor  # [k]
    bias: float

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, self.latents].float() @ self.weight + self.bias


def main_latents(
    train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor, letter: int, cfg: AbsorptionConfig
) -> tuple[SparseProbe, float]:
    """The letter's main latents (step 3 of the module docstring), their k-sparse probe and its test F1."""
    positive = train_y == letter
    gap = train_f[positive].float().mean(0) - train_f[~positive].float().mean(0)
    ranked = gap.topk(min(cfg.max_k, len(gap))).indices.tolist()
    best, chosen, best_f1 = -1.0, None, 0.0
    for k in range(1, len(ranked) + 1):
        latents = ranked[:k]
        fit = fit_logistic(train_f[:, latents], positive[:, None].double())
        probe = SparseProbe(latents, fit.weight[0], float(fit.bias[0]))
        score = f1(probe.scores(test_f) > 0, test_y == letter)
        if chosen is not None and score <= best + cfg.f1_jump_threshold:
            break
        best, chosen, best_f1 = score, probe, score
    return chosen, best_f1


# ---------------------------------------------------------------------------------------------- absorption


def latent_projections(
    W_dec: torch.Tensor, input_scale: torch.Tensor, features: torch.Tensor, direction: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, cos): a[w, i] = f_i (W_dec,i · p̂)/s, latent i's share of word w's reconstruction projected on the
    unit direction p̂; cos[i] = cos(W_dec,i, p̂)."""
    along = W_dec.float() @ direction.float()
    cos = along / W_dec.float().norm(dim=1).clamp_min(1e-12)
    return features.float() * (along / input_scale.float()), cos


def absorption_fractions(
    projection: torch.Tensor, contributions: torch.Tensor, cos: torch.Tensor, main: list[int], cfg: AbsorptionConfig
) -> torch.Tensor:
    """SAEBench's absorption fraction of each word (rows of `contributions`; `projection` = x · p̂)."""
    is_main = torch.zeros(contributions.shape[1], dtype=torch.bool)
    is_main[main] = True
    main_share = contributions[:, is_main].sum(1)
    candidates = contributions.masked_fill(is_main | (cos < cfg.absorber_cos_threshold), 0).clamp_min(0)
    k = min(cfg.max_absorbing_latents, contributions.shape[1])
    absorbed = candidates.topk(k, dim=1).values.sum(1)
    enough = (projection > 0) & (absorbed >= cfg.projection_share_threshold * projection)
    share = torch.minimum(absorbed, projection - main_share)
    partial = (share / (share + main_share)).clamp(0, 1)
    fraction = torch.where(main_share <= 0, torch.ones_like(partial), partial)
    return torch.where(enough & (main_share < projection), fraction, torch.zeros_like(fraction))


def full_absorption(
    projection: torch.Tensor,
    contributions: torch.Tensor,
    features: torch.Tensor,
    cos: torch.Tensor,
    main: list[int],
    cfg: AbsorptionConfig,
) -> torch.Tensor:
    """SAEBench's full absorption of each word: no main latent fires, and the latent with the largest
    projection is aligned with the probe and carries at least the threshold share of x · p̂."""
    silent = (features[:, main].abs() < 1e-8).all(1)
    top, top_latent = contributions.max(1)
    aligned = cos[top_latent] >= cfg.full_absorption_cos_threshold
    return silent & aligned & (projection > 0) & (top >= cfg.projection_share_threshold * projection)


@dataclass
class LetterAbsorption:
    letter: str
    probe_true_positives: int  # test words of the letter the probe classifies correctly
    main_latents: list[int]
    absorption_fraction: float  # mean over the true positives
    full_absorption_rate: float
    full_absorptions: int
    probe_f1: float  # of the letter's probe on the test words
    sparse_probe_f1: float  # of the main latents' k-sparse probe


@dataclass
class AbsorptionResult:
    mean_absorption_fraction: float  # over letters with true positives
    mean_full_absorption_rate: float
    mean_main_latents: float
    # How well the letters are read at this hook at all: mean test F1 of the probes and of the main latents'
    # k-sparse probes, over letters with test words. Where the probe reads letters poorly, so do the rates.
    mean_probe_f1: float
    mean_sparse_probe_f1: float
    letters: list[LetterAbsorption]
    train_words: int
    test_words: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as null), for metrics.json."""
        return finite_or_none(asdict(self))


@dataclass
class ProbeData:
    """The words' activations at the hook, their letters, and the letters' probe."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    probe: LinearProbe
    test_words: list[str]


def probe_data_from_activations(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, test_words: list[str]
) -> ProbeData:
    """Fits the letters' probe (step 2) on the train activations."""
    targets = torch.nn.functional.one_hot(train_y, len(LETTERS))
    return ProbeData(train_x, train_y, test_x, test_y, fit_logistic(train_x, targets), test_words)


@torch.no_grad()
def absorption_from_probe_data(sae, data: ProbeData, cfg: AbsorptionConfig) -> AbsorptionResult:
    """Steps 3 and 4 for one SAE."""
    device = sae.W_dec.device
    train_f = sae.encode(data.train_x.to(device)).float().cpu()
    test_f = sae.encode(data.test_x.to(device)).float().cpu()
    probe_scores = data.probe.scores(data.test_x)
    W_dec, input_scale = sae.W_dec.detach().float().cpu(), sae.input_scale.detach().float().cpu()
    letters = []
    for letter in range(len(LETTERS)):
        truth = data.test_y == letter
        if not (data.train_y == letter).any() or not truth.any():
            continue
        caught = probe_scores[:, letter] > 0
        true_positive = truth & caught
        n_tp = int(true_positive.sum())
        sparse, sparse_f1 = main_latents(train_f, data.train_y, test_f, data.test_y, letter, cfg)
        candidates = true_positive & (sparse.scores(test_f) <= 0)
        direction = data.probe.weight[letter] / data.probe.weight[letter].norm().clamp_min(1e-12)
        x, f = data.test_x[candidates], test_f[candidates]
        contributions, cos = latent_projections(W_dec, input_scale, f, direction)
        projection = x.float() @ direction
        fractions = absorption_fractions(projection, contributions, cos, sparse.latents, cfg)
        full = full_absorption(projection, contributions, f, cos, sparse.latents, cfg)
        letters.append(
            LetterAbsorption(
                letter=LETTERS[letter],
                probe_true_positives=n_tp,
                main_latents=sparse.latents,
                absorption_fraction=float(fractions.sum()) / n_tp if n_tp else float("nan"),
                full_absorption_rate=int(full.sum()) / n_tp if n_tp else float("nan"),
                full_absorptions=int(full.sum()),
                probe_f1=f1(caught, truth),
                sparse_probe_f1=sparse_f1,
            )
        )
    scored = [r for r in letters if r.probe_true_positives > 0]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    return AbsorptionResult(
        mean_absorption_fraction=mean([r.absorption_fraction for r in scored]),
        mean_full_absorption_rate=mean([r.full_absorption_rate for r in scored]),
        mean_main_latents=mean([len(r.main_latents) for r in scored]),
        mean_probe_f1=mean([r.probe_f1 for r in letters]),
        mean_sparse_probe_f1=mean([r.sparse_probe_f1 for r in letters]),
        letters=letters,
        train_words=len(data.train_y),
        test_words=len(data.test_y),
    )


# ---------------------------------------------------------------------------------------------- the model


def probe_data_path(cache_dir: str | Path, model: str, model_dtype: str, hook: str, cfg: AbsorptionConfig) -> Path:
    """Where the words' activations and probe for this model, hook and settings are kept."""
    identity = {"model": model, "model_dtype": model_dtype, "hook": hook, **cfg.words_identity(), "version": VERSION}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{model}-{hook}")
    return Path(cache_dir) / "absorption" / f"{slug}-{digest}.safetensors"


def collect_probe_data(bridge, hook: str, cfg: AbsorptionConfig) -> ProbeData:
    """Steps 1 and 2: the words' activations at the hook and the letters' probe."""
    tokenizer = bridge.tokenizer
    bos = bos_token_id(bridge)
    train, test = split_words(tokenizer, cfg)
    rng = random.Random(cfg.seed + 1)
    xs = [
        last_token_activations(bridge, hook, icl_prompts(words, tokenizer, bos, cfg, rng), cfg.batch_size)
        for words in (train, test)
    ]
    ys = [torch.tensor([letter_of(text) for _, text in words]) for words in (train, test)]
    return probe_data_from_activations(xs[0], ys[0], xs[1], ys[1], [text for _, text in test])


def save_probe_data(path: Path, data: ProbeData) -> None:
    tensors = {
        "train_x": data.train_x,
        "train_y": data.train_y,
        "test_x": data.test_x,
        "test_y": data.test_y,
        "probe_weight": data.probe.weight,
        "probe_bias": data.probe.bias,
    }
    with atomic_output(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"test_words": json.dumps(data.test_words)})


def load_probe_data(path: Path) -> ProbeData | None:
    """The stored probe data, or None when there is none (or it cannot be read: it is then computed again)."""
    try:
        t = load_file(path)
        with safe_open(path, "pt") as f:  # the metadata (the test words) is read apart from the tensors
            words = json.loads(f.metadata()["test_words"])
    except Exception:
        return None
    probe = LinearProbe(t["probe_weight"], t["probe_bias"])
    return ProbeData(t["train_x"], t["train_y"], t["test_x"], t["test_y"], probe, words)


def absorption(
    sae,
    bridge,
    hook: str,
    cfg: AbsorptionConfig | None = None,
    cache_path: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> AbsorptionResult:
    """The first-letter absorption of `sae`, which reads `hook` of the model.

    `bridge` is the model (a TransformerBridge) or a function returning it (`sae.lm.bridge.lazy_bridge`),
    called only when the words' activations are not stored at `cache_path` (`probe_data_path`)."""
    cfg = cfg or AbsorptionConfig()
    data = load_probe_data(Path(cache_path)) if cache_path is not None and Path(cache_path).exists() else None
    if data is None:
        model = bridge() if callable(bridge) and not hasattr(bridge, "run_with_cache") else bridge
        log(f"[absorption] activations of {cfg.n_words} words at {hook} ...")
        data = collect_probe_data(model, hook, cfg)
        if cache_path is not None:
            save_probe_data(Path(cache_path), data)
    else:
        log(f"[absorption] reusing the words' activations and probe in {cache_path}")
    return absorption_from_probe_data(sae, data, cfg)


def absorption_metrics(
    sae, bridge, model_cfg: ModelConfig, cache_dir: str | Path, cfg: AbsorptionConfig, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """For evaluate.py's metrics stage: `absorption(...).as_dict()` at the model's hook, the words' activations
    and probe kept under `cache_dir` (the activation cache's directory)."""
    hook = hook_name(model_cfg)
    path = probe_data_path(cache_dir, model_cfg.name, model_cfg.dtype, hook, cfg)
    return absorption(sae, bridge, hook, cfg, path, log).as_dict()
