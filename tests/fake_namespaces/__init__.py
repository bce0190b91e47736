"""Array API namespaces that are wrong in one way each, for tests/test_adversarial.py.

``exact`` changes nothing; the others are wrong exactly where their names say. Each module
is a namespace whose arrays report it (``__array_namespace__``), so the conformance suite,
given ``--namespace fake_namespaces.<name>``, tests its functions and its arrays' operators.
"""
