"""The fake's stand-in for the C++ executor (no counterpart in the release): in-flight batching on one thread.

Each iteration admits waiting requests while fewer than ``max_batch_size`` are in flight (and, without chunked
context, while the iteration's prompt tokens fit in ``max_num_tokens``), then advances every request in flight by
one token: a newly admitted request gets its first token from its prefill, the others one decoding step. A
request leaves as soon as it ends, so its slot is taken by a waiting one in the next iteration. The next token is
computed by running the Hugging Face model on the whole sequence (no KV cache) in float32 on CPU, then chosen the
way the runtime's sampling layer does: repetition penalty; end token masked below ``min_tokens``; greedy when
top_k = 1, or top_k = 0 with top_p = 0; otherwise temperature, top-k, top-p and a draw from a generator seeded with
``seed`` (0 when unset). An end token ends the request without being returned, unless ``ignore_eos`` (the worker
then hands the runtime end_id -1, executor/worker.py). A token of ``stop_token_ids`` ends the request whatever
``ignore_eos`` and ``min_tokens`` say (the runtime's stop-word check knows neither, kernels/stopCriteriaKernels.cu)
and is trimmed from the output unless ``include_stop_str_in_output`` (executor/result.py, _handle_sequence).
"""

from __future__ import annotations

import collections
import threading

import torch


class _Active:
    __slots__ = ("generated", "generator", "ids", "params", "result", "stop_reason")

    def __init__(self, result, params):
        self.result = result
        self.params = params
        self.ids = list(result.prompt_token_ids)
        self.generated: list[int] = []
        self.stop_reason: int | None = None  # the stop token that ended the request (None: end_id or length)
        self.generator = torch.Generator().manual_seed(params.seed if params.seed is not None else 0)


class Executor:
    def __init__(self, hf_dir: str, max_batch_size: int, max_num_tokens: int, chunked_context: bool) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.chunked_context = chunked_context
        self.iterations = 0
        self.max_in_flight = 0  # the most requests seen in flight in one iteration
        self._waiting: collections.deque = collections.deque()
        self._active: list[_Active] = []
        self._cond = threading.Condition()
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="fake-trtllm-executor", daemon=True)
        self._thread.start()

    def submit(self, result, params) -> None:
        with self._cond:
            if self._stop:
                raise RuntimeError("the executor has been shut down")
            self._waiting.append(_Active(result, params))
            self._cond.notify()

    def shutdown(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _admit(self) -> list[_Active]:
        admitted, budget = [], self.max_num_tokens
        while self._waiting and len(self._active) < self.max_batch_size:
            need = len(self._waiting[0].ids)
            if not self.chunked_context and admitted and need > budget:
                break
            req = self._waiting.popleft()
            budget -= need
            self._active.append(req)
            admitted.append(req)
        return admitted

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._waiting and not self._active:
                    self._cond.wait()
                if self._stop:
                    return
                self._admit()
                batch = list(self._active)
            self.max_in_flight = max(self.max_in_flight, len(batch))
            finished = []
            for req in batch:
                token, reason = self._step(req)
                if token is not None:
                    req.generated.append(token)
                    req.ids.append(token)
                if reason is None and len(req.generated) >= req.params.max_tokens:
                    reason = "length"
                req.result._post([] if token is None else [token], reason, req.stop_reason)
                if reason is not None:
                    finished.append(req)
            self.iterations += 1
            with self._cond:
                for req in finished:
                    self._active.remove(req)

    @torch.inference_mode()
    def _step(self, req: _Active):
        p = req.params
        logits = self.model(torch.tensor([req.ids])).logits[0, -1].float()
        if p.repetition_penalty is not None and p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(req.ids)))
            vals = logits[seen]
            logits[seen] = torch.where(vals < 0, vals * p.repetition_penalty, vals / p.repetition_penalty)
        if p.end_id is not None and len(req.generated) < (p.min_tokens or 0):
            logits[p.end_id] = float("-inf")
        top_k, top_p = p.top_k or 0, p.top_p or 0.0
        if top_k == 1 or (top_k == 0 and top_p == 0.0):
            token = int(torch.argmax(logits))
        else:
            logits = logits / (p.temperature if p.temperature else 1.0)
            if top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits[logits < kth] = float("-inf")
            probs = torch.softmax(logits, dim=-1)
            if 0.0 < top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                drop = torch.cumsum(sorted_p, dim=-1) - sorted_p > top_p
                sorted_p[drop] = 0.0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            token = int(torch.multinomial(probs / probs.sum(), 1, generator=req.generator))
        if token == p.end_id and not p.ignore_eos:  # ignore_eos: the worker gives the runtime end_id -1
            return None, "stop"
        if token in (p.stop_token_ids or ()):  # stop words hold whatever ignore_eos and min_tokens say
            req.stop_reason = token
            return (token if p.include_stop_str_in_output else None), "stop"  # trimmed from the output by default
        return token, None
