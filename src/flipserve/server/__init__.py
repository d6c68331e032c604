"""The model server: a KServe runtime for one text classifier on a blue/green volume.

- ``model``: the ``kserve.Model`` (READY check, loading, v1/v2 predict)
- ``batching``: dynamic batching onto one forward-pass thread
- ``monitor``: online drift over a window of live embeddings
- ``app``: flipserve's routes, limits, headers and HTTP error mapping
- ``telemetry``: Prometheus metrics
- ``runtime``: ``kserve.ModelServer`` wiring, torch threads, graceful stop
- ``feedback``: a directory sink for ``POST /feedback``

``flipserve serve`` (cli.py) builds a FlipserveModel and runs it with
``runtime.FlipserveServer``; nothing here imports the store.
"""
