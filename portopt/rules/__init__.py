"""The update rules, one module per family; each rule is one elementwise kernel."""

from .adabound import AdaBound
from .adadelta import AdaDelta
from .adagrad import AdaGrad
from .adagradnorm import AdaGradNorm
from .adam import Adam, AdamW, AMSGrad
from .adamax import Adamax
from .asgd import ASGD
from .lion import Lion
from .nadam import NAdam
from .radam import RAdam
from .rmsprop import RMSProp
from .rprop import Rprop
from .sgd import SGD, SignSGD

__all__ = ["Adam", "AdamW", "AMSGrad", "AdaGrad", "RMSProp", "SGD", "NAdam", "AdaDelta", "Adamax", "RAdam",
           "Rprop", "ASGD", "Lion", "AdaBound", "SignSGD", "AdaGradNorm", "RULES"]

# Every rule by name; the tests and the conformance suite are driven from this table.
RULES = {rule.name: rule for rule in (Adam, AdamW, AMSGrad, AdaGrad, RMSProp, SGD, NAdam, AdaDelta, Adamax, RAdam,
                                      Rprop, ASGD, Lion, AdaBound, SignSGD, AdaGradNorm)}
