"""Package of the vLLM 0.11.0 stand-in (see ``vllm/__init__.py``)."""
