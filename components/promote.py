"""Step `promote`: after a successful deployment, the candidate becomes the champion in the registry."""

import json
from pathlib import Path

from kfp.dsl import Artifact, Input, Model

from components.config import Config
from components.kfp_support import step
from components.registry import Champion, promote_champion


def promote_deployed(config: Config, model_dir: str | Path, decision_dir: str | Path, deployment: dict) -> Champion:
    """Record the deployed candidate (with the metrics its gate decision was made on) as the champion."""
    decision = json.loads((Path(decision_dir) / "decision.json").read_text(encoding="utf-8"))
    metrics = decision["candidate"]["metrics"]
    note = f"deployed to Triton as version {deployment.get('version')}; {decision['reason']}"
    return promote_champion(config.paths.artifacts_dir, model_dir, metrics, note=note)


@step
def promote_op(config: str, model: Input[Model], decision: Input[Artifact], deployment: Input[Artifact]) -> str:
    """KFP: make the deployed candidate the champion; returns its registry version."""
    import json
    from pathlib import Path

    from components.config import config_from_text
    from components.promote import promote_deployed

    deployed = json.loads(Path(deployment.path).read_text(encoding="utf-8"))
    return promote_deployed(config_from_text(config), model.path, decision.path, deployed).version
