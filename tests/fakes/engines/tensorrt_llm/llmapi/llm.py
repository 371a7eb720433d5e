"""Fake of ``tensorrt_llm.llmapi.llm`` at 1.0.0: ``_TrtLLM`` (exported as ``tensorrt_llm._tensorrt_engine.LLM``),
the LLM API over a TensorRT engine, and ``RequestOutput``.

Modelled: the constructor's signature and its rejection of unknown keywords (``ValueError: ... got invalid
argument``, as the release raises before validating the arguments); the model-format probe (engine folder vs
Hugging Face checkpoint); "building" from a checkpoint into the workspace (a config.json with ``version``,
``pretrained_config`` and ``build_config``, one ``rank<N>.engine`` per rank, and the checkpoint's tokenizer files); loading a saved engine, whose
build config then replaces any given one; ``save``; ``generate_async`` with the release's argument checks (prompt
longer than max_input_len, prompt + max_tokens beyond max_seq_len); ``shutdown``. Chunked context and KV block
reuse are refused unless the engine was built with paged KV cache and paged context FMHA, as the executor does.

Every constructed LLM is appended to ``INSTANCES`` and every build to ``BUILDS`` (its resolved BuildConfig,
QuantConfig, CalibConfig, dtype and checkpoint), so tests can check what the engine was given.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from .._fake_runtime import Executor
from ..bindings import KVCacheType
from ..builder import BuildConfig, EngineConfig
from ..executor.result import GenerationResult
from ..executor.utils import enable_worker_single_process_for_tp1
from ..models.modeling_utils import QuantConfig
from ..quantization.mode import QuantAlgo
from ..sampling_params import SamplingParams
from ..version import __version__
from .llm_args import TRT_LLM_ARG_NAMES, CalibConfig, KvCacheConfig, is_engine_dir
from .mpi_session import MpiPoolSession

INSTANCES: list = []
BUILDS: list[dict] = []


class RequestOutput(GenerationResult):
    """The output of one request: ``request_id``, ``prompt``, ``prompt_token_ids``, ``outputs``, ``finished``."""

    @property
    def prompt(self) -> str | None:
        return None


class _Args:
    """The parsed constructor arguments (the release keeps a TrtLlmArgs here)."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class _TrtLLM:
    """LLM over a TensorRT engine, built from a checkpoint or loaded from an engine folder."""

    def __init__(
        self,
        model: str | Path,
        tokenizer=None,
        tokenizer_mode: Literal["auto", "slow"] = "auto",
        skip_tokenizer_init: bool = False,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        revision: str | None = None,
        tokenizer_revision: str | None = None,
        **kwargs: Any,
    ) -> None:
        for key in kwargs:
            if key not in TRT_LLM_ARG_NAMES | {"_mpi_session"}:
                raise ValueError(f"{self.__class__.__name__} got invalid argument: {key}")
        self.init_kwargs = {
            "model": model,
            "tokenizer": tokenizer,
            "tokenizer_mode": tokenizer_mode,
            "skip_tokenizer_init": skip_tokenizer_init,
            "trust_remote_code": trust_remote_code,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "revision": revision,
            "tokenizer_revision": tokenizer_revision,
            **kwargs,
        }
        spec = kwargs.get("speculative_config")
        if spec is not None and not spec.supports_backend(kwargs.get("backend")):
            raise ValueError(f"Speculation type {spec.decoding_type} does not support backend {kwargs.get('backend')}")
        if dtype not in ("auto", "float16", "bfloat16", "float32"):
            raise ValueError(f"unsupported dtype {dtype!r}")
        build_config = kwargs.get("build_config")
        if build_config is not None and not isinstance(build_config, BuildConfig):
            raise AssertionError(f"build_config is not initialized: {build_config}")
        if build_config is None:
            build_config = BuildConfig(
                **{
                    k: kwargs[k]
                    for k in ("max_batch_size", "max_num_tokens", "max_seq_len", "max_beam_width", "max_input_len")
                    if kwargs.get(k)
                }
            )
        self.args = _Args(
            model=model,
            tokenizer=tokenizer,
            skip_tokenizer_init=skip_tokenizer_init,
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=kwargs.get("pipeline_parallel_size", 1),
            dtype=dtype,
            build_config=build_config,
            quant_config=kwargs.get("quant_config") or QuantConfig(),
            calib_config=kwargs.get("calib_config") or CalibConfig(),
            kv_cache_config=kwargs.get("kv_cache_config") or KvCacheConfig(),
            enable_chunked_prefill=kwargs.get("enable_chunked_prefill", False),
            max_batch_size=kwargs.get("max_batch_size"),
            max_num_tokens=kwargs.get("max_num_tokens", 8192),
            workspace=kwargs.get("workspace"),
        )
        self._engine_dir: Path | None = None
        self._executor: Executor | None = None
        self._workspace = tempfile.TemporaryDirectory(suffix="-llm-workspace", dir=self.args.workspace)
        self._tokenizer = None
        self._next_id = 0
        INSTANCES.append(self)
        try:
            self._build_model()
        except Exception:
            self._workspace.cleanup()
            raise

    # ---------------------------------------------------------------------------------------------- properties
    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def workspace(self) -> Path:
        return Path(self._workspace.name)

    # ---------------------------------------------------------------------------------------------- building
    def _build_model(self) -> None:
        model = Path(self.args.model)
        if not model.is_dir() or not (model / "config.json").is_file():
            raise ValueError(
                f"{self.args.model}: neither an engine folder nor a local checkpoint (the hub is not modelled)"
            )
        if is_engine_dir(model):
            self._load_engine(model)
        else:
            self._build_engine(model)
        self.args.model = self._engine_dir
        self._load_tokenizer()
        bc = self.args.build_config
        paged = bc.kv_cache_type == KVCacheType.PAGED
        if self.args.enable_chunked_prefill and not (paged and bc.plugin_config.use_paged_context_fmha):
            raise RuntimeError(
                "Chunked context requires paged KV cache and paged context FMHA (use_paged_context_fmha) in the engine"
            )
        if self.args.kv_cache_config.enable_block_reuse and not (paged and bc.plugin_config.use_paged_context_fmha):
            raise RuntimeError("KV cache block reuse requires paged KV cache and paged context FMHA in the engine")
        max_batch = min(self.args.max_batch_size or bc.max_batch_size, bc.max_batch_size)
        max_tokens = min(self.args.max_num_tokens or bc.max_num_tokens, bc.max_num_tokens)
        self.runtime_limits = {"max_batch_size": max_batch, "max_num_tokens": max_tokens, "max_seq_len": bc.max_seq_len}
        # GenerationExecutor.create (executor/executor.py): several ranks, or one rank without
        # TLLM_WORKER_USE_SINGLE_PROCESS=1, run the executor in MPI workers started through mpi4py
        world = self.args.tensor_parallel_size * self.args.pipeline_parallel_size
        if world > 1 or not enable_worker_single_process_for_tp1():
            MpiPoolSession(n_workers=world)
            self.executor_process = "mpi_worker"
        else:
            self.executor_process = "single_process"
        self._executor = Executor(str(self._hf_model_dir), max_batch, max_tokens, self.args.enable_chunked_prefill)

    def _build_engine(self, hf_dir: Path) -> None:
        with open(hf_dir / "config.json", encoding="utf-8") as fh:
            hf = json.load(fh)
        bc = copy.deepcopy(self.args.build_config)
        if bc.kv_cache_type is None:
            bc.kv_cache_type = (
                KVCacheType.PAGED if bc.plugin_config.paged_kv_cache is not False else KVCacheType.CONTINUOUS
            )
        bc.plugin_config.paged_kv_cache = bc.kv_cache_type == KVCacheType.PAGED
        if bc.max_seq_len is None:
            bc.max_seq_len = hf.get("max_position_embeddings") or 2048
        if bc.max_input_len > bc.max_seq_len:
            bc.max_input_len = bc.max_seq_len
        quant = self.args.quant_config
        prequantized = self._update_from_hf_quant_config(hf)
        calibrated = quant._requires_calibration and not prequantized
        if calibrated:
            self._quantize(hf_dir)
        tp, pp = self.args.tensor_parallel_size, self.args.pipeline_parallel_size
        dtype = (
            self.args.dtype if self.args.dtype != "auto" else (hf.get("torch_dtype") or hf.get("dtype") or "float16")
        )
        heads = hf["num_attention_heads"]
        pretrained = {
            "architecture": (hf.get("architectures") or ["LlamaForCausalLM"])[0],
            "dtype": dtype,
            "vocab_size": hf["vocab_size"],
            "hidden_size": hf["hidden_size"],
            "num_hidden_layers": hf["num_hidden_layers"],
            "num_attention_heads": heads,
            "num_key_value_heads": hf.get("num_key_value_heads", heads),
            "intermediate_size": hf.get("intermediate_size"),
            "head_size": hf.get("head_dim") or hf["hidden_size"] // heads,
            "max_position_embeddings": hf.get("max_position_embeddings"),
            "mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp},
            "quantization": {"quant_algo": quant.quant_algo, "kv_cache_quant_algo": quant.kv_cache_quant_algo},
        }
        engine_dir = self.workspace / "tmp.engine"
        engine_dir.mkdir(parents=True)
        with open(engine_dir / "config.json", "w", encoding="utf-8") as fh:
            json.dump(EngineConfig(pretrained, bc, __version__).to_dict(), fh, indent=2)
        # As the release's model loader does, the checkpoint's tokenizer files go with the engine.
        for item in hf_dir.iterdir():
            if item.is_file() and (
                item.name.startswith(("tokenizer", "vocab", "special_tokens_map"))
                or item.name in ("merges.txt", "generation_config.json")
            ):
                shutil.copy2(item, engine_dir / item.name)
        for rank in range(tp * pp):  # a fake engine records where its weights come from instead of compiled kernels
            with open(engine_dir / f"rank{rank}.engine", "w", encoding="utf-8") as fh:
                json.dump({"fake_engine": True, "checkpoint": str(hf_dir.resolve()), "rank": rank}, fh)
        BUILDS.append(
            {
                "checkpoint": str(hf_dir),
                "dtype": self.args.dtype,
                "build_config": bc,
                "quant_config": quant,
                "calib_config": self.args.calib_config if calibrated else None,
                "tensor_parallel_size": tp,
                "pipeline_parallel_size": pp,
                "at": time.time(),
            }
        )
        self.args.build_config = bc
        self._engine_dir = engine_dir
        self._hf_model_dir = hf_dir

    def _update_from_hf_quant_config(self, hf: dict) -> bool:
        """ModelLoader._update_from_hf_quant_config (llmapi/llm_utils.py): a checkpoint's quantization_config is
        taken as pre-quantised weights; only FP8 with block scales and MXFP4 are understood, anything else (AWQ,
        GPTQ, BitsAndBytes, ...) is NotImplementedError."""
        quant = hf.get("quantization_config")
        if quant is None:
            return False
        qc = self.args.quant_config
        if quant.get("quant_method") == "fp8" and quant.get("weight_block_size"):
            qc.quant_algo = QuantAlgo.FP8_BLOCK_SCALES
        elif quant.get("quant_method") == "mxfp4":
            qc.quant_algo = QuantAlgo.W4A16_MXFP4
        else:
            raise NotImplementedError(f"Unsupported quantization_config: {quant}.")
        return True

    def _quantize(self, hf_dir: Path) -> None:
        """The calibration step of a build (the scales themselves are not computed): ModelOpt recipes read the
        calibration set as quantize_by_modelopt.get_calib_dataloader does; any other recipe goes to the model's own
        quantize(), which handles SmoothQuant plugins and INT8 KV cache only (models/llama/convert.py)."""
        quant = self.args.quant_config
        if not quant._requires_modelopt_quantization:
            if not (quant._use_plugin_sq or quant.kv_cache_quant_algo == QuantAlgo.INT8):
                raise AssertionError("Call from_hugging_face when there is no quantization")
            return
        name = self.args.calib_config.calib_dataset
        if "scienceqa" in name.lower() or "science_qa" in name.lower():
            # a multimodal set: its rows go through the processor's preprocess_function, which a text tokenizer lacks
            raise AttributeError("tokenizer has no attribute 'preprocess_function' (ScienceQA is calibrated as images)")
        if name == "pileval" or "cnn_dailymail" in name:
            if os.path.isdir(name):
                self._read_local_calibration(name)
                return
            # downloaded from the Hugging Face hub (pileval from the-eye.eu): the fake has no network
            raise ConnectionError(
                f"calibration dataset {name} must be downloaded while building (no network in the fake)"
            )
        if os.path.isdir(name):
            self._read_local_calibration(name)
            return
        raise NotImplementedError(f"Unsupported dataset name or local repo directory: {name}.")

    @staticmethod
    def _read_local_calibration(folder: str) -> None:
        from datasets import load_dataset

        load_dataset(folder, split="train")["text"]  # KeyError without a text column, as in the release

    def _load_engine(self, engine_dir: Path) -> None:
        cfg = EngineConfig.from_json_file(engine_dir / "config.json")
        mapping = cfg.pretrained_config["mapping"]
        if self.args.tensor_parallel_size not in (1, mapping["tp_size"]):
            raise ValueError(
                f"tp_size {self.args.tensor_parallel_size} is not consistent with the engine's tp_size {mapping['tp_size']}"
            )
        if self.args.pipeline_parallel_size not in (1, mapping["pp_size"]):
            raise ValueError(
                f"pp_size {self.args.pipeline_parallel_size} is not consistent with the engine's pp_size {mapping['pp_size']}"
            )
        with open(engine_dir / "rank0.engine", encoding="utf-8") as fh:
            self._hf_model_dir = Path(json.load(fh)["checkpoint"])
        self.args.build_config = cfg.build_config
        self.args.tensor_parallel_size, self.args.pipeline_parallel_size = mapping["tp_size"], mapping["pp_size"]
        self._engine_dir = engine_dir

    def _load_tokenizer(self) -> None:
        if self.args.skip_tokenizer_init:
            return
        from transformers import AutoTokenizer

        source = self.args.tokenizer or self._engine_dir
        if not isinstance(source, (str, Path)):
            self._tokenizer = source
            return
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(source))
        except Exception:  # noqa: BLE001 - the release leaves the tokenizer unset when the folder has none
            self._tokenizer = None

    def save(self, engine_dir: str) -> None:
        if self._engine_dir is None:
            raise RuntimeError("The engine is not built yet.")
        if os.path.abspath(self._engine_dir) == os.path.abspath(engine_dir):
            return
        shutil.copytree(self._engine_dir, engine_dir, dirs_exist_ok=True)

    # ---------------------------------------------------------------------------------------------- generation
    def generate_async(
        self,
        inputs,
        sampling_params: SamplingParams | None = None,
        lora_request=None,
        prompt_adapter_request=None,
        streaming: bool = False,
        kv_cache_retention_config=None,
        disaggregated_params=None,
        _postproc_params=None,
        scheduling_params=None,
        cache_salt: str | None = None,
    ) -> RequestOutput:
        if self._executor is None:
            raise RuntimeError("LLM is shut down")
        if isinstance(inputs, dict):
            ids = inputs.get("prompt_token_ids")
            text = inputs.get("prompt")
        elif isinstance(inputs, str):
            ids, text = None, inputs
        else:
            ids, text = list(inputs), None
        params = copy.deepcopy(sampling_params) if sampling_params is not None else SamplingParams()
        params._setup(self._tokenizer)
        if ids is None:
            if self._tokenizer is None:
                raise ValueError("text prompts need a tokenizer")
            ids = self._tokenizer.encode(text, add_special_tokens=params.add_special_tokens)
        bc = self.args.build_config
        if len(ids) > bc.max_input_len:
            raise ValueError(f"The inputs length ({len(ids)}) is larger than max_input_len ({bc.max_input_len})")
        if len(ids) + params.max_tokens > bc.max_seq_len:
            raise ValueError(
                f"The sum of prompt length ({len(ids)}) and query length (0) max_tokens ({params.max_tokens}) should not exceed max_seq_len ({bc.max_seq_len})"
            )
        result = RequestOutput(self._next_id, ids, params, streaming, self._tokenizer)
        self._next_id += 1
        self._executor.submit(result, params)
        return result

    def generate(self, inputs, sampling_params=None, use_tqdm: bool = True, **kwargs):
        single = not isinstance(inputs, list) or (inputs and isinstance(inputs[0], int))
        batch = [inputs] if single else inputs
        futures = [self.generate_async(x, sampling_params, **kwargs) for x in batch]
        done = [f.result() for f in futures]
        return done[0] if single else done

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
        self._workspace.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
        return False


class LLM:
    """``tensorrt_llm.LLM`` is the PyTorch flow in this release; it is not modelled by the fake."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("the fake models the TensorRT-engine flow only (tensorrt_llm._tensorrt_engine.LLM)")
