"""Frostpoint: self-hosted backup for virtual machines."""
__version__ = "0.1.0"
