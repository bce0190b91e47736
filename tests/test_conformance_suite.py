"""The full conformance suite (primitives and golden vectors) on every backend found here.

The same tests a third party runs with ``pytest -p portopt.conformance.plugin --pyargs
portopt.conformance.suite``; the plugin is loaded by tests/conftest.py.
"""

from portopt.conformance.suite import (  # noqa: F401 - collected by pytest
    test_golden_vectors,
    test_primitives_correctly_rounded_in_portopt_namespace,
)
