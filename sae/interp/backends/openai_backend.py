"""Any OpenAI-compatible endpoint through the real `openai` client: OpenAI, vLLM, llama.cpp's server, Ollama.

Explanations use chat completions. Simulation ("all at once") needs prompt log-probabilities: it
asks the completions endpoint to echo the prompt with `logprobs=N` (vLLM and llama.cpp's server
return them; OpenAI's hosted models no longer do) and takes the expected value over "0".."10" at
each "unknown". With `simulator=auto`, an endpoint that does not return them gets the fallback:
the chat model rewrites every line with an integer. Retries with exponential backoff on 429, 5xx,
timeouts and dropped connections are the client's own (`max_retries`, `timeout`). The API key is
read from the environment variable named by `api_key_env` and scrubbed from every error message.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from sae.core.checks import require
from sae.core.errors import ConfigError
from sae.interp.backends.base import (
    BackendError,
    ExplainerConfig,
    Explanation,
    Simulation,
    add_usage,
    expected_value,
    prompt_records,
)
from sae.interp.prompts import (
    MalformedCompletion,
    explain_messages,
    integers_messages,
    parse_explanation,
    parse_integers,
    simulate_prompt,
    simulate_text,
)
from sae.interp.records import Record, UnitRecords

PROMPT_RECORDS = 5
PROBE_ATTEMPTS = 3  # probes of `simulator=auto` before a unit fails undecided (each with the client's own retries)
PROBE_BACKOFF_S = 0.5
NO_KEY = "not-needed"  # local servers ignore the key, but the client insists on one


SIMULATOR_METHODS = ("auto", "logprobs", "integers")


@dataclass
class OpenAIConfig(ExplainerConfig):
    kind: str = "openai"
    model: str = "gpt-4o-mini"  # the model name the endpoint serves
    base_url: Optional[str] = None  # e.g. http://127.0.0.1:8000/v1 ; null = OpenAI's API
    # Name of the environment variable that holds the key (the key itself is never in a config).
    # null: the endpoint needs no key (a local llama.cpp or vLLM server).
    api_key_env: Optional[str] = "OPENAI_API_KEY"
    max_concurrency: int = 4
    max_retries: int = 4  # the openai client's own exponential backoff on 429, 5xx, timeouts
    timeout_s: float = 120.0
    # logprobs: all-at-once expected value from prompt log-probabilities (completions with echo);
    # integers: the chat model rewrites each line with an integer; auto: logprobs when the endpoint
    # returns them, else integers. Each result records the method that produced it.
    simulator: str = "auto"
    top_logprobs: int = 15
    explanation_max_tokens: int = 60
    temperature: float = 0.0

    def __post_init__(self) -> None:
        require(
            self.simulator in SIMULATOR_METHODS, f"explainer.simulator={self.simulator!r}: choose one of {SIMULATOR_METHODS}."
        )
        require(self.max_concurrency >= 1, f"explainer.max_concurrency={self.max_concurrency} must be >= 1.")
        require(self.max_retries >= 0, f"explainer.max_retries={self.max_retries} must be >= 0.")
        require(self.timeout_s > 0, f"explainer.timeout_s={self.timeout_s} must be > 0.")
        require(1 <= self.top_logprobs <= 20, f"explainer.top_logprobs={self.top_logprobs} must be in 1..20.")
        require(self.explanation_max_tokens >= 1, f"explainer.explanation_max_tokens={self.explanation_max_tokens} must be >= 1.")
        require(self.temperature >= 0, f"explainer.temperature={self.temperature} must be >= 0.")
        require(
            bool(self.model) and not self.model.startswith("embedded:"),
            f"explainer.model={self.model!r}: name the model the endpoint serves, e.g. explainer.model=gpt-4o-mini.",
        )
        if self.api_key_env is not None:
            require(
                self.api_key_env.isidentifier(),
                "explainer.api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), never the key.",
            )

    @property
    def identity(self) -> str:
        return f"openai:{self.base_url or 'api.openai.com'}:{self.model}"

    @property
    def workers(self) -> int:
        return self.max_concurrency

    def check_ready(self) -> None:
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise ConfigError(
                f"explainer=openai needs an API key: the environment variable {self.api_key_env} "
                f"(explainer.api_key_env) is not set. Export it, or set explainer.api_key_env=null "
                f"for a server that needs no key."
            )


class OpenAIBackend:
    def __init__(self, cfg: OpenAIConfig):
        import openai

        self.cfg = cfg
        self.identity = cfg.identity
        self._openai = openai
        self._key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else NO_KEY
        self._method = {"auto": None, "logprobs": "logprobs", "integers": "integers"}[cfg.simulator]
        self._method_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self.client = None
        self.memo = None  # a ResultStore of answered requests, set by the pipeline: nothing is asked twice
        if self._key:
            self.client = openai.OpenAI(
                base_url=cfg.base_url, api_key=self._key, max_retries=cfg.max_retries, timeout=cfg.timeout_s
            )

    def simulator_identity(self) -> str:
        """Keys stored simulations: the method actually used once `auto` is resolved."""
        return f"{self.identity}:{self._method or self.cfg.simulator}"

    def resolve_simulator(self, explanation: Explanation, record: Record) -> str:
        """Decide `auto` (once per run) before the first simulation is keyed."""
        return self._method or self._probe(explanation, record)

    # -- errors ---------------------------------------------------------------------------------

    def _check_key(self) -> None:
        if self.client is None:
            raise BackendError(
                f"no API key: the environment variable {self.cfg.api_key_env} (explainer.api_key_env) is not set. "
                f"Export it, or set explainer.api_key_env=null for a server that needs no key."
            )

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key and self._key != NO_KEY else text

    def _reason(self, exc: Exception) -> str:
        o, cfg = self._openai, self.cfg
        where = cfg.base_url or "api.openai.com"
        if isinstance(exc, o.AuthenticationError):
            msg = f"authentication failed (401) at {where}: check the key in ${cfg.api_key_env}"
        elif isinstance(exc, o.NotFoundError):
            msg = f"not found (404) at {where}: is model {cfg.model!r} served there? ({exc.message})"
        elif isinstance(exc, o.RateLimitError):
            msg = f"rate limited (429) at {where}, still after {cfg.max_retries} retries with backoff"
        elif isinstance(exc, o.APITimeoutError):
            msg = f"timed out after {cfg.timeout_s}s at {where} (tried {cfg.max_retries + 1} times)"
        elif isinstance(exc, o.APIConnectionError):
            msg = f"cannot reach {where} ({exc.__cause__ or exc}); is the server running? (tried {cfg.max_retries + 1} times)"
        elif isinstance(exc, o.APIStatusError):
            msg = f"server error ({exc.status_code}) at {where} after {cfg.max_retries} retries: {exc.message}"
        else:
            msg = f"{type(exc).__name__}: {exc}"
        return self._scrub(msg)

    def _request_key(self, endpoint: str, kwargs: dict) -> dict:
        blob = json.dumps(
            {"endpoint": endpoint, "base_url": self.cfg.base_url, "model": self.cfg.model, **kwargs}, sort_keys=True
        )
        return {"request": hashlib.sha256(blob.encode()).hexdigest()}

    def _ask(self, endpoint: str, parse, **kwargs):
        """parse(response) for one request; the answer comes from the store when this exact request was
        answered (and parsed) before, and is stored once it parses. Identical requests in flight at the
        same time wait for each other, so none is asked twice; a malformed answer is asked again next run."""
        from openai.types import Completion
        from openai.types.chat import ChatCompletion

        key = self._request_key(endpoint, kwargs)
        with self._key_lock(key["request"]):
            if self.memo is not None and self.memo.done(key):
                from openai._models import construct_type  # the client's own lenient construction (echoed
                # prompts have null logprobs at the first token, which strict validation rejects)

                cls = ChatCompletion if endpoint == "chat" else Completion
                return parse(construct_type(type_=cls, value=self.memo.get(key)["response"]))
            self._check_key()
            fn = self.client.chat.completions.create if endpoint == "chat" else self.client.completions.create
            try:
                response = fn(model=self.cfg.model, **kwargs)
            except self._openai.OpenAIError as exc:
                raise BackendError(self._reason(exc)) from exc
            try:
                value = parse(response)
            except MalformedCompletion as exc:
                raise BackendError(self._scrub(str(exc))) from exc
            if self.memo is not None:
                self.memo.put(key, "ok", response=response.model_dump(mode="json"))
            return value

    def _key_lock(self, request: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(request, threading.Lock())

    # -- explain --------------------------------------------------------------------------------

    def explain(self, records: UnitRecords) -> Explanation:
        def parse(response):
            choice = self._only_choice(response)
            text = parse_explanation(choice.message.content or "", choice.finish_reason == "length")
            return Explanation(text=text, usage=self._usage(response))

        return self._ask(
            "chat",
            parse,
            messages=explain_messages(prompt_records(records, PROMPT_RECORDS)),
            max_tokens=self.cfg.explanation_max_tokens,
            temperature=self.cfg.temperature,
        )

    # -- simulate -------------------------------------------------------------------------------

    def simulate(self, explanation: Explanation, records: Sequence[Record]) -> Simulation:
        method = self._method
        if method is None:
            method = self._probe(explanation, records[0]) if records else "integers"
        usage: dict = {}
        predictions = [self._simulate_one(method, explanation.text, r.tokens, usage) for r in records]
        return Simulation(predictions=predictions, method=method, usage=usage)

    def _probe(self, explanation: Explanation, record: Record) -> str:
        """auto: does this endpoint return prompt log-probabilities? Decided once per run, and only on a
        definite answer (a response without them, or a refusal of the request): a transient failure
        (timeout, dropped connection, 429, 5xx) is retried, and if it persists the unit fails undecided."""
        o = self._openai
        transient = (o.APIConnectionError, o.RateLimitError, o.InternalServerError)
        with self._method_lock:
            attempt = 0
            while self._method is None:
                try:
                    self._logprobs(explanation.text, record.tokens, {})
                    self._method = "logprobs"
                except BackendError as exc:
                    if self.client is None or isinstance(exc.__cause__, o.AuthenticationError):
                        raise  # the endpoint itself is unusable: not a reason to change method
                    if not isinstance(exc.__cause__, transient):
                        self._method = "integers"
                    elif attempt + 1 >= PROBE_ATTEMPTS:
                        raise BackendError(
                            f"could not tell whether the endpoint returns prompt log-probabilities "
                            f"({PROBE_ATTEMPTS} probes): {exc}"
                        ) from exc
                    else:
                        time.sleep(PROBE_BACKOFF_S * 2**attempt)
                        attempt += 1
            return self._method

    def _simulate_one(self, method: str, explanation: str, tokens: Sequence[str], usage: dict) -> list[float]:
        if method == "logprobs":
            return self._logprobs(explanation, tokens, usage)

        def parse(response):
            choice = self._only_choice(response)
            add_usage(usage, self._usage(response))
            return parse_integers(choice.message.content or "", len(tokens), choice.finish_reason == "length")

        return self._ask(
            "chat",
            parse,
            messages=integers_messages(explanation, tokens),
            max_tokens=8 * len(tokens) + 32,
            temperature=self.cfg.temperature,
        )

    def _logprobs(self, explanation: str, tokens: Sequence[str], usage: dict) -> list[float]:
        where = self.cfg.base_url or "api.openai.com"
        prefix, lines = simulate_prompt(explanation, tokens)
        placeholders, offset = [], len(prefix)  # where each line's "unknown" starts in the prompt text
        for line in lines:
            placeholders.append(offset + len(line))
            offset += len(line) + len("unknown\n")

        def parse(response):
            choice = self._only_choice(response)
            add_usage(usage, self._usage(response))
            lp = choice.logprobs
            if lp is None or not lp.tokens or not lp.top_logprobs:
                raise BackendError(
                    f"{where} returned no prompt log-probabilities (echo + logprobs); "
                    "use explainer.simulator=integers for this endpoint."
                )
            at = placeholder_tokens(lp.tokens, getattr(lp, "text_offset", None), placeholders)
            # no value among the top-N at a position: predict inactive there
            return [expected_value(lp.top_logprobs[i] or {}) or 0.0 for i in at]

        return self._ask(
            "completions",
            parse,
            prompt=simulate_text(explanation, tokens),
            max_tokens=1,
            echo=True,
            logprobs=self.cfg.top_logprobs,
            temperature=0,
        )

    # -- helpers --------------------------------------------------------------------------------

    def _only_choice(self, response):
        choices = getattr(response, "choices", None)
        if not choices:
            raise BackendError("malformed completion: the response has no choices")
        return choices[0]

    @staticmethod
    def _usage(response) -> dict:
        u = getattr(response, "usage", None)
        if u is None:
            return {}
        return {
            "prompt_tokens": int(getattr(u, "prompt_tokens", 0) or 0),
            "completion_tokens": int(getattr(u, "completion_tokens", 0) or 0),
        }


def placeholder_tokens(tokens: Sequence[str], text_offset: Sequence[int] | None, placeholders: Sequence[int]) -> list[int]:
    """Index of the echoed token holding each "unknown" placeholder, found by character offset.

    Matching by offset, not by text, so a record token that is itself " unknown" is never taken for a
    placeholder. Uses the server's `text_offset` when it gives one, else the tokens' running lengths.
    """
    candidates = []
    if text_offset is not None and len(text_offset) == len(tokens):
        candidates.append(list(text_offset))
    starts, pos = [], 0
    for t in tokens:
        starts.append(pos)
        pos += len(t)
    candidates.append(starts)
    for starts in candidates:
        at = [bisect.bisect_right(starts, p) - 1 for p in placeholders]
        if all(0 <= i < len(tokens) and "unknown".startswith(tokens[i].strip()[:7]) and tokens[i].strip() for i in at):
            return at
    raise MalformedCompletion(
        f"malformed completion: the echoed prompt's tokens do not line up with its {len(placeholders)} 'unknown' placeholders"
    )
