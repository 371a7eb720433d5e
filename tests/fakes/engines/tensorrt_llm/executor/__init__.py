from .result import CompletionOutput, GenerationResult

__all__ = ["CompletionOutput", "GenerationResult"]
