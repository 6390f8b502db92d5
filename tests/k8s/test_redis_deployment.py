"""The Redis StatefulSet of k8s/ really locks its door: its command line, with the Secret's value put in as the
kubelet does, starts a redis-server that refuses clients without the password, and its readiness probe passes
only with the password the pod gets from the Secret."""

import os
import re
import subprocess
import time

import pytest
import redis

from components.processes import free_port
from tests.conftest import KUBECTL_MISSING, REDIS_MISSING
from tests.k8s import policies as P

pytestmark = [
    pytest.mark.integration,
    KUBECTL_MISSING,
    REDIS_MISSING,
]



def test_redis_statefulset_requires_its_password(tmp_path):
    objs = P.render("overlays/local")
    [sts] = [o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "redis"]
    [c] = sts["spec"]["template"]["spec"]["containers"]
    password, port = "a-test-password-0123456789", str(free_port())
    # the pod's environment: every variable from the Secret `recsys-redis` gets the test's password
    env = {e["name"]: password for e in c["env"]
           if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "recsys-redis"}
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], a) for a in c["args"]]  # the kubelet's $(VAR) expansion
    args = [str(tmp_path) if a == "/data" else port if a == "6379" else a for a in args]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=int(port), password=password)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert client.ping()
                break
            except redis.exceptions.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=int(port)).ping()
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
        probe = [a.replace("6379", port) for a in c["readinessProbe"]["exec"]["command"]]
        base = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
        assert subprocess.run(probe, env={**base, **env}, timeout=10).returncode == 0
        assert subprocess.run(probe, env=base, timeout=10).returncode != 0  # NOAUTH is not ready
    finally:
        proc.terminate()
        proc.wait(timeout=10)
