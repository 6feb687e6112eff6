"""A Hugging Face causal LM in-process: explains by greedy generation, simulates with exact prompt log-probabilities.

The simulator is Bills's "all at once" method: one forward pass over the prompt with every target
token written as "token<TAB>unknown"; at each "unknown" the model's probabilities of "0".."10"
(those that are single tokens in its vocabulary) are renormalised and their expected value is the
prediction. The shared prompt prefix (instructions, few-shot, explanation) is run once per unit and
its key/value cache reused for every record. Works with no network on the packaged SmolLM2.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sae.core.checks import require
from sae.interp.backends.base import BackendError, ExplainerConfig, Explanation, Simulation, prompt_records
from sae.interp.prompts import MAX_VALUE, MalformedCompletion, explain_messages, parse_explanation, simulate_prompt
from sae.interp.records import Record, UnitRecords
from sae.lm.bridge import pick_device
from sae.lm.embedded import resolve_model_path

PROMPT_RECORDS = 5  # Bills et al. explained from 5 top records


@dataclass
class LocalConfig(ExplainerConfig):
    kind: str = "local"
    model: str = "embedded:smollm2"  # a Hugging Face name or directory, or "embedded:smollm2" (packaged, offline)
    device: str = "auto"
    dtype: str = "float32"  # bfloat16 is faster on CPUs with AVX-512 bf16 (never float16 on CPU)
    sim_batch_size: int = 8  # records per forward pass
    explanation_max_tokens: int = 60

    def __post_init__(self) -> None:
        require(self.dtype in ("float32", "bfloat16"), f"explainer.dtype={self.dtype!r}: use float32 or bfloat16.")
        require(self.sim_batch_size >= 1, f"explainer.sim_batch_size={self.sim_batch_size} must be >= 1.")
        require(self.explanation_max_tokens >= 1, f"explainer.explanation_max_tokens={self.explanation_max_tokens} must be >= 1.")

    @property
    def identity(self) -> str:
        return f"local:{self.model}:{self.dtype}"


class LocalBackend:
    def __init__(self, cfg: LocalConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer  # seconds to import: only for this backend

        self.cfg = cfg
        self.identity = cfg.identity
        path = resolve_model_path(cfg.model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, cfg.dtype))
        except OSError as exc:
            raise BackendError(f"explainer.model={cfg.model!r}: could not load it ({exc}).") from exc
        self.device = pick_device(cfg.device)
        self.model.to(self.device).eval()
        self.value_ids = self._value_token_ids()
        unknown = self.encode("unknown")
        self.unknown_id = unknown[0]
        self.newline_ids = self.encode("\n")
        self.end_ids = self.encode("<end>\n")
        self.unknown_ids = unknown

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _value_token_ids(self) -> dict[int, int]:
        """Values 0..10 whose text is one token (with digit-splitting tokenizers, "10" is not, and is left out)."""
        out = {}
        for v in range(MAX_VALUE + 1):
            ids = self.encode(str(v))
            if len(ids) == 1:
                out[v] = ids[0]
        if not out:
            raise BackendError(f"explainer.model={self.cfg.model!r}: its vocabulary has no single-token digits.")
        return out

    def simulator_identity(self) -> str:
        return f"{self.identity}:all_at_once_logprobs"

    @torch.no_grad()
    def explain(self, records: UnitRecords) -> Explanation:
        messages = explain_messages(prompt_records(records, PROMPT_RECORDS))
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        input_ids = ids["input_ids"].to(self.device)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=ids["attention_mask"].to(self.device),
            max_new_tokens=self.cfg.explanation_max_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        new = out[0, input_ids.shape[1] :]
        truncated = len(new) >= self.cfg.explanation_max_tokens and int(new[-1]) != self.tokenizer.eos_token_id
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        try:
            return Explanation(
                text=parse_explanation(text, truncated),
                usage={"prompt_tokens": int(input_ids.shape[1]), "completion_tokens": int(len(new))},
            )
        except MalformedCompletion as exc:
            raise BackendError(str(exc)) from exc

    def record_ids(self, lines: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids of one record's lines, and the positions of each "unknown" within them."""
        ids, positions = [], []
        for line in lines:
            ids.extend(self.encode(line))
            positions.append(len(ids))
            ids.extend(self.unknown_ids + self.newline_ids)
        return ids + self.end_ids, positions

    @torch.no_grad()
    def simulate(self, explanation: Explanation, records: Sequence[Record]) -> Simulation:
        prefix, _ = simulate_prompt(explanation.text, [])
        prefix_ids = torch.tensor([self.encode(prefix)], device=self.device)
        prefix_out = self.model(input_ids=prefix_ids, use_cache=True)
        values = torch.tensor(list(self.value_ids), dtype=torch.float32)
        value_ids = torch.tensor(list(self.value_ids.values()), device=self.device)
        predictions: list[list[float]] = []
        n_tokens = int(prefix_ids.shape[1])
        for start in range(0, len(records), self.cfg.sim_batch_size):
            batch = records[start : start + self.cfg.sim_batch_size]
            encoded = [self.record_ids(simulate_prompt(explanation.text, r.tokens)[1]) for r in batch]
            width = max(len(ids) for ids, _ in encoded)
            n_tokens += sum(len(ids) for ids, _ in encoded)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), prefix_ids.shape[1] + width), dtype=torch.long)
            mask[:, : prefix_ids.shape[1]] = 1
            for i, (ids, _) in enumerate(encoded):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                mask[i, prefix_ids.shape[1] : prefix_ids.shape[1] + len(ids)] = 1
            cache = copy.deepcopy(prefix_out.past_key_values)
            cache.batch_repeat_interleave(len(batch))
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), past_key_values=cache, use_cache=True
            ).logits
            # The logit predicting suffix token p sits at p - 1; for p = 0 it is the prefix's last logit.
            last_prefix = prefix_out.logits[0, -1]
            for i, (_, positions) in enumerate(encoded):
                rows = torch.stack([logits[i, p - 1] if p > 0 else last_prefix for p in positions])
                probs = torch.softmax(rows[:, value_ids].float(), dim=-1).cpu()
                predictions.append((probs * values).sum(dim=-1).tolist())
        return Simulation(predictions=predictions, method="logprobs", usage={"prompt_tokens": n_tokens})
