"""Helpers shared by tests and benchmarks (synthetic data, no models): not product code.

Import as ``tests.helpers.<module>``; the repository root must be on ``sys.path``
(``python -m pytest`` from the root, or ``PYTHONPATH=<root>`` as benchmarks set it).
"""
