"""Frozen CNN features: backbones, views, runtimes, the per-image cache, the engine, extraction
and view selection."""
