"""Locust scenario of the serving benchmark: closed-loop users, each posting one /recommend after the other.

Run by benchmarks/bench_serving.py through the load generator's own environment (`make loadgen` builds
.venv-loadgen: locust's pins do not fit the project's), or by hand against a running API:

    RECSYS_API_TOKEN=... RECSYS_LOAD_USERS=943 .venv-loadgen/bin/locust -f benchmarks/locustfile.py --headless \
        -u 32 -r 32 -t 15s --host http://127.0.0.1:3000

Environment: RECSYS_API_TOKEN (a key with the `recommend` scope), RECSYS_LOAD_USERS (user ids are drawn from
1..N), RECSYS_LOAD_SEED.
"""

import os
import random

from locust import FastHttpUser, constant, task


class RecommendUser(FastHttpUser):
    """One closed-loop client: the next request leaves when the previous answer arrived."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.users = int(os.environ.get("RECSYS_LOAD_USERS", "943"))
        self.rng = random.Random(int(os.environ.get("RECSYS_LOAD_SEED", "0")) + id(self))
        self.headers = {"Authorization": f"Bearer {os.environ['RECSYS_API_TOKEN']}"}

    @task
    def recommend(self) -> None:
        self.client.post("/recommend", json={"user_id": self.rng.randint(1, self.users), "k": 10},
                         headers=self.headers, name="/recommend")
