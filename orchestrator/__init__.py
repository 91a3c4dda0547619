"""The cmpnas driver side: configuration, CLI, Ray orchestration, MLflow tracking, Pareto, export, serving.

Subpackages, each with one job (the import directions are in docs/architecture.md and enforced by
tests/test_layering.py): ``common``, ``config``, ``tracking``, ``strategies``, ``setup``,
``results``, ``search``, ``supernet``, ``export``, ``serving``; ``cli`` on top.
"""
