"""Serving trained models: the `predictor` (images of any size -> labels, optional CRF), `export`
(jax.export artifacts and TF SavedModels) and `visualize` (palette PNGs, overlays, panels)."""
