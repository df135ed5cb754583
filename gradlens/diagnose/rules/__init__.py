"""The diagnosis rules, one per file, all on :class:`~gradlens.diagnose.rules.base.Rule`."""

from gradlens.diagnose.rules.base import Condition, Rule
from gradlens.diagnose.rules.dead_units import DeadUnits
from gradlens.diagnose.rules.divergence import Divergence
from gradlens.diagnose.rules.exploding import Exploding
from gradlens.diagnose.rules.nonfinite import NonFinite
from gradlens.diagnose.rules.oscillation import Oscillation
from gradlens.diagnose.rules.saturation import Saturation
from gradlens.diagnose.rules.scale import Scale
from gradlens.diagnose.rules.stalled import Stalled
from gradlens.diagnose.rules.unreachable_output import UnreachableOutput
from gradlens.diagnose.rules.update_ratio import UpdateRatio
from gradlens.diagnose.rules.vanishing import Vanishing

#: Every built-in rule, in the order findings of one step are reported (a rule whose findings
#: are often the cause of others', ``Scale``, before them).
DEFAULT_RULES = (
    NonFinite,
    Divergence,
    Scale,
    Exploding,
    Vanishing,
    DeadUnits,
    Saturation,
    UpdateRatio,
    Stalled,
    Oscillation,
    UnreachableOutput,
)

__all__ = [
    "Condition", "Rule", "DEFAULT_RULES", "NonFinite", "Divergence", "Exploding",
    "Vanishing", "DeadUnits", "Saturation", "UpdateRatio",
    "Scale",
    "Stalled",
    "Oscillation",
    "UnreachableOutput",
]
