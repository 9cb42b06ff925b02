"""Fault-injection tests: hostile or broken inputs must fail cleanly."""
