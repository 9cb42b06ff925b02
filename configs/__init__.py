"""Experiment configurations: one get_config() per file (see deeplab_jax/config/base.py)."""
