"""portopt's conformance suite: golden vectors every backend must reproduce bit for bit.

Run it with ``portopt conformance`` (or ``python -m portopt.conformance``); see README.md.
"""
