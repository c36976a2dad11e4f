"""Lethe: enforce a privacy policy over a company's own data."""

__version__ = "0.1.0"
