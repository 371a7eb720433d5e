"""Fake of ``tensorrt_llm.executor.result`` at 1.0.0: ``CompletionOutput`` and the streamed ``GenerationResult``.

As in the release, one result object is returned by ``generate_async`` and updated in place: with
``streaming=True`` each ``async for`` step hands back the same object after one engine response has been applied
(``outputs[0].token_ids`` is cumulative, ``token_ids_diff`` holds what that response added). Responses are
produced on the executor thread and handed to the caller's asyncio loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float | None = None
    logprobs: list[float] = field(default_factory=list)
    finish_reason: Literal["stop", "length"] | None = None
    stop_reason: int | str | None = None
    generation_logits: Any = None
    _last_text_len: int = field(default=0, init=False, repr=False)
    _last_token_ids_len: int = field(default=0, init=False, repr=False)
    _last_logprobs_len: int = field(default=0, init=False, repr=False)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def text_diff(self) -> str:
        return self.text[self._last_text_len :]

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len :]


class GenerationResult:
    """One request's result. ``finished`` turns true with the response that ends the request."""

    def __init__(self, request_id: int, prompt_token_ids: list[int], sampling_params, streaming: bool, tokenizer=None):
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.outputs = [CompletionOutput(index=0)]
        self.context_logits = None
        self._done = False
        self._streaming = streaming
        self._tokenizer = tokenizer
        try:
            self._loop = asyncio.get_running_loop()
            self._aqueue: asyncio.Queue | None = asyncio.Queue()
        except RuntimeError:
            self._loop, self._aqueue = None, None
        self._queue: queue.Queue = queue.Queue()

    @property
    def finished(self) -> bool:
        return self._done

    # executor side ---------------------------------------------------------------------------------------------
    def _post(self, new_tokens: list[int], finish_reason: str | None, stop_reason: int | None = None) -> None:
        item = (list(new_tokens), finish_reason, stop_reason)
        if self._aqueue is not None:
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody is listening any more
                self._loop.call_soon_threadsafe(self._aqueue.put_nowait, item)
        else:
            self._queue.put(item)

    # caller side -----------------------------------------------------------------------------------------------
    def _apply(self, item) -> None:
        new_tokens, finish_reason, stop_reason = item
        out = self.outputs[0]
        out._last_token_ids_len = len(out.token_ids)
        out._last_text_len = len(out.text)
        out.token_ids = out.token_ids + new_tokens
        if self._tokenizer is not None and self.sampling_params.detokenize:
            out.text = self._tokenizer.decode(
                out.token_ids, skip_special_tokens=self.sampling_params.skip_special_tokens
            )
        if finish_reason is not None:
            out.finish_reason = finish_reason
            # the stop token, for a request a stop word ended (as _handle_sequence sets it)
            out.stop_reason = stop_reason
            self._done = True

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._done:
            raise StopAsyncIteration
        if self._aqueue is None:
            raise RuntimeError("generate_async was called outside a running event loop; iterate with result() instead")
        self._apply(await self._aqueue.get())
        return self

    async def aresult(self):
        while not self._done:
            self._apply(await self._aqueue.get())
        return self

    def result(self, timeout: float | None = None):
        if self._aqueue is not None:
            raise RuntimeError("this result belongs to an event loop: await aresult()")
        while not self._done:
            self._apply(self._queue.get(timeout=timeout))
        return self
