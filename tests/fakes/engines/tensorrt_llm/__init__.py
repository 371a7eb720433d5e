"""A fake of TensorRT-LLM 1.0.0 (``nvcr.io/nvidia/tensorrt-llm/release:1.0.0``) for tests on machines without it.

Mirrors, with the release's names, signatures and defaults, the part of the LLM API the TensorRT-engine flow uses:
``tensorrt_llm._tensorrt_engine.LLM`` (``llmapi.llm._TrtLLM``: build from a Hugging Face checkpoint or load an
engine folder, ``save``, ``generate_async(..., streaming=True)``, ``shutdown``), ``tensorrt_llm.llmapi``
(BuildConfig, QuantConfig, QuantAlgo, CalibConfig, KvCacheConfig, SamplingParams, DraftTargetDecodingConfig),
``tensorrt_llm.builder.BuildConfig``, ``tensorrt_llm.plugin.PluginConfig``, ``tensorrt_llm.bindings.KVCacheType``,
``tensorrt_llm.sampling_params.SamplingParams`` and ``tensorrt_llm.executor.result``. Unknown arguments are
refused the way the release refuses them (TypeError for dataclasses, ValueError for the LLM and the pydantic
models). Tokens are real: the checkpoint's model runs on CPU, scheduled by in-flight batching up to the engine's
max_batch_size (see ``_fake_runtime``), stopping on ``end_id`` and on ``stop_token_ids`` as the release does.

Building follows the release's paths for quantisation: a checkpoint's ``quantization_config`` other than FP8
block-scale or MXFP4 is NotImplementedError (llmapi/llm_utils.py), ModelOpt recipes read their calibration set as
``get_calib_dataloader`` does (a known name, fetched from the network: refused here, or a local folder whose train
split has a text column), and other calibrated recipes such as W4A16_GPTQ hit the SmoothQuant path's assertion.
Where the executor runs follows ``GenerationExecutor.create``: in process when one rank and
TLLM_WORKER_USE_SINGLE_PROCESS=1 (read once per process), otherwise in MPI workers started as
``MpiPoolSession`` starts them, which re-runs the parent's main module in a child process as mpi4py does
(``llmapi/mpi_session``), so a main script that works at import time fails the engine's start.

Not modelled: compilation (an "engine" is a config.json plus rank files that point back at the checkpoint), the
numerics of the engine's dtype and of quantisation (generation is float32; a calibrating recipe is recorded, not
run), tensor/pipeline parallelism (recorded, run as one process after the workers' start), chunked context as such
(it only lifts the per-iteration prompt-token budget), KV cache capacity and block reuse, beam search, speculative
decoding, detokenisation beyond ``tokenizer.decode``, the PyTorch flow (``tensorrt_llm.LLM``), the hub, MPI
communication and GPUs.
"""

from .builder import BuildConfig
from .llmapi import LLM, SamplingParams
from .version import __version__

__all__ = ["LLM", "BuildConfig", "SamplingParams", "__version__"]
