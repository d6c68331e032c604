"""flipserve: blue/green serving for transformer text models, gated on score and drift."""

__version__ = "0.1.0"
