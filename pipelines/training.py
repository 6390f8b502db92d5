"""The KFP v2 training pipeline: ingest -> validate (later steps plug in after validate)."""

from kfp import dsl

from components.ingest import ingest_op
from components.validate import validate_op

NAME = "recsys-training"


@dsl.pipeline(name=NAME, description="Ingest and validate interactions, then train, evaluate and deploy a recommender.")
def training_pipeline(config: str) -> None:
    """`config` is the YAML text of the resolved project configuration."""
    ingest = ingest_op(config=config).set_caching_options(False).set_display_name("ingest")
    validate_op(config=config, canonical=ingest.outputs["canonical"]).set_display_name("validate")
