"""TERRa: textual entailment recognition for Russian (accuracy)."""

from mlx_rsg.tasks.nli import ENTAILS, NLITask

TASK = NLITask("TERRa", ("entailment", "not_entailment"), answer=ENTAILS)
