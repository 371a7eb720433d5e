"""``vllm.sampling_params``: SamplingParams with vLLM 0.11.0's fields, defaults and the checks that matter here."""

from __future__ import annotations

from enum import Enum
from typing import Any

_SAMPLING_EPS = 1e-5


class RequestOutputKind(Enum):
    CUMULATIVE = 0  # every output carries all tokens so far
    DELTA = 1  # only the tokens new since the last output
    FINAL_ONLY = 2  # one output, when the request finishes


_DEFAULTS: dict[str, Any] = {
    "n": 1,
    "best_of": None,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "seed": None,
    "stop": None,
    "stop_token_ids": None,
    "ignore_eos": False,
    "max_tokens": 16,
    "min_tokens": 0,
    "logprobs": None,
    "prompt_logprobs": None,
    "detokenize": True,
    "skip_special_tokens": True,
    "spaces_between_special_tokens": True,
    "logits_processors": None,
    "include_stop_str_in_output": False,
    "truncate_prompt_tokens": None,
    "output_kind": RequestOutputKind.CUMULATIVE,
    "structured_outputs": None,
    "guided_decoding": None,
    "logit_bias": None,
    "allowed_token_ids": None,
    "extra_args": None,
    "bad_words": None,
}


class SamplingParams:
    """Keyword construction as the real msgspec Struct; ``given`` keeps what the caller passed."""

    def __init__(self, **kwargs: Any) -> None:
        for name in kwargs:
            if name not in _DEFAULTS:
                raise TypeError(f"Unexpected keyword argument '{name}'")
        self.given = dict(kwargs)
        for name, default in _DEFAULTS.items():
            setattr(self, name, kwargs.get(name, default))
        self.stop = [] if self.stop is None else ([self.stop] if isinstance(self.stop, str) else self.stop)
        self.stop_token_ids = self.stop_token_ids or []
        if self.logprobs is True:
            self.logprobs = 1
        self._verify_args()
        if self.temperature < _SAMPLING_EPS:  # greedy: the other sampling knobs are neutralised
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
        # every token min_tokens holds back; the engine adds the EOS ids (sampling_params.py:360-361)
        self._all_stop_token_ids: set[int] = set(self.stop_token_ids)

    def update_from_generation_config(
        self, generation_config: dict[str, Any], model_eos_token_id: int | None = None
    ) -> None:
        """As 0.11.0 (sampling_params.py:460-484): the tokenizer's EOS joins the tokens min_tokens holds back; the
        generation config's other eos_token_id values become stop tokens too, unless ignore_eos."""
        if model_eos_token_id is not None:
            self._all_stop_token_ids.add(model_eos_token_id)
        eos_ids = generation_config.get("eos_token_id")
        if eos_ids is not None:
            eos_ids = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids)
            if model_eos_token_id is not None:
                eos_ids.discard(model_eos_token_id)
            if eos_ids:
                self._all_stop_token_ids.update(eos_ids)
                if not self.ignore_eos:
                    eos_ids.update(self.stop_token_ids)
                    self.stop_token_ids = list(eos_ids)

    @property
    def all_stop_token_ids(self) -> set[int]:
        return self._all_stop_token_ids

    def _verify_args(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise ValueError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise ValueError(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.")
        if self.repetition_penalty <= 0.0:
            raise ValueError(f"repetition_penalty must be greater than zero, got {self.repetition_penalty}.")
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < -1:
            raise ValueError(f"top_k must be 0 (disable), or at least 1, got {self.top_k}.")
        if not isinstance(self.top_k, int):
            raise TypeError(f"top_k must be an integer, got {type(self.top_k).__name__}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be greater than or equal to 0, got {self.min_tokens}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, got {self.min_tokens}."
            )
        if self.logprobs is not None and self.logprobs != -1 and self.logprobs < 0:
            raise ValueError(f"logprobs must be non-negative, got {self.logprobs}.")

    def clone(self) -> SamplingParams:
        twin = SamplingParams(**self.given)
        twin.__dict__.update(
            {
                k: (set(v) if isinstance(v, set) else list(v) if isinstance(v, list) else v)
                for k, v in self.__dict__.items()
                if k != "given"
            }
        )
        return twin

    def __repr__(self) -> str:
        return f"SamplingParams({', '.join(f'{k}={v!r}' for k, v in self.given.items())})"
