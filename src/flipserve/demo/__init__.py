"""``flipserve demo``: the whole blue/green flow on one machine (see flow.py)."""

from flipserve.demo.flow import run

__all__ = ["run"]
