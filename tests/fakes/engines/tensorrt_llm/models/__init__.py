from .modeling_utils import QuantConfig

__all__ = ["QuantConfig"]
