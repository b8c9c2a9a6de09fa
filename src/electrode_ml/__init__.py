"""electrode-ml: deep-learning screening of metal-ion battery electrodes (Ma et al. 2022 and beyond)."""

__version__ = "0.1.0"
