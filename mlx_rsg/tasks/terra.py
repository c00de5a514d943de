"""TERRa: textual entailment recognition for Russian (accuracy)."""

from mlx_rsg.tasks.nli import NLITask

TASK = NLITask("TERRa", ("entailment", "not_entailment"))
