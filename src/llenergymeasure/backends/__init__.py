"""Inference backends. Engines are imported inside each backend, never at package import."""
