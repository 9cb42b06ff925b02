"""Evaluation: the Evaluator (jitted confusion matrices, host mIoU), metrics, trimap accuracy,
test-time inference (multi-scale, flip, sliding window) and the CRF parameter search.

Nothing here imports training code: evaluators receive a model and its variables.
"""
