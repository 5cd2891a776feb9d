"""Adapters: one module per outside system; the only modules that import a vendor SDK."""
