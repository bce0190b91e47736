"""The update rules, one module per family; each rule is one elementwise kernel."""

from .adagrad import AdaGrad
from .adam import Adam, AdamW, AMSGrad
from .rmsprop import RMSProp

__all__ = ["Adam", "AdamW", "AMSGrad", "AdaGrad", "RMSProp", "RULES"]

# Every rule by name; the tests and the conformance suite are driven from this table.
RULES = {rule.name: rule for rule in (Adam, AdamW, AMSGrad, AdaGrad, RMSProp)}
