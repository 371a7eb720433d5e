"""``vllm.lora.request.LoRARequest`` (vLLM 0.11.0 fields and checks; a msgspec Struct there, a class here)."""

from __future__ import annotations


class LoRARequest:
    def __init__(
        self,
        lora_name: str,
        lora_int_id: int,
        lora_path: str = "",
        lora_local_path: str | None = None,
        long_lora_max_len: int | None = None,
        base_model_name: str | None = None,
        tensorizer_config_dict: dict | None = None,
    ) -> None:
        if lora_int_id < 1:
            raise ValueError(f"id must be > 0, got {lora_int_id}")
        if lora_local_path and not lora_path:
            lora_path = lora_local_path
        assert lora_path, "lora_path cannot be empty"
        self.lora_name = lora_name
        self.lora_int_id = lora_int_id
        self.lora_path = lora_path
        self.lora_local_path = lora_local_path
        self.long_lora_max_len = long_lora_max_len
        self.base_model_name = base_model_name
        self.tensorizer_config_dict = tensorizer_config_dict

    @property
    def adapter_id(self) -> int:
        return self.lora_int_id

    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def path(self) -> str:
        return self.lora_path

    def __eq__(self, other) -> bool:
        return isinstance(other, LoRARequest) and self.lora_name == other.lora_name

    def __hash__(self) -> int:
        return hash(self.lora_name)

    def __repr__(self) -> str:
        return (
            f"LoRARequest(lora_name={self.lora_name!r}, lora_int_id={self.lora_int_id}, lora_path={self.lora_path!r})"
        )
