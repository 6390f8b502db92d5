"""`components.train.main` under torchrun, with each rank's weights saved when its DistributedDataParallel model
runs its first and second forward pass (before any step, and after exactly one optimizer step), so a test can
check that the ranks, fed different batches, hold identical weights: their gradients were all-reduced.

Usage: torchrun ... tests/components/ddp_snapshot.py SNAPSHOT_DIR <components.train arguments>
"""

import sys
from pathlib import Path

import torch

FORWARDS_TO_SAVE = (1, 2)


def main() -> None:
    snapshots = Path(sys.argv[1])
    snapshots.mkdir(parents=True, exist_ok=True)
    calls = {"n": 0}

    def save(module: torch.nn.Module, _inputs: object, _output: object) -> None:
        if not isinstance(module, torch.nn.parallel.DistributedDataParallel) or not module.training:
            return
        calls["n"] += 1
        if calls["n"] in FORWARDS_TO_SAVE:
            rank = torch.distributed.get_rank()
            state = {k: v.detach().cpu().clone() for k, v in module.module.state_dict().items()}
            torch.save(state, snapshots / f"rank{rank}_forward{calls['n']}.pt")

    torch.nn.modules.module.register_module_forward_hook(save)  # observes; changes nothing
    from components.train import main as train_main

    train_main(sys.argv[2:])


if __name__ == "__main__":
    main()
