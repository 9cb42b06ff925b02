"""Tests of deeplab_jax.models: layers, backbones, heads, factories, registry, PointRend."""
