"""What deploy/Dockerfile gives every container, for the deploy and chart tests."""

import functools
import re
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


@functools.lru_cache(maxsize=None)
def runtime_env():
    """ENV of the Dockerfile's runtime (last) stage, as a dict."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    runtime = text.rsplit("\nFROM ", 1)[1]
    env = {}
    for line in runtime.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    assert "SESAME_LISTEN" in env, "the Dockerfile's ENV was not found"
    return dict(env)
