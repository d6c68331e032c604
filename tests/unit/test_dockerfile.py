"""The image and the chart agree: user, entrypoint, port, model path, CPU torch."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
VALUES = yaml.safe_load((ROOT / "charts" / "flipserve" / "values.yaml").read_text())


def _runtime_stage() -> str:
    return DOCKERFILE.rsplit("\nFROM ", 1)[1]


def test_image_runs_as_the_non_root_user_the_chart_expects() -> None:
    pod = VALUES["podSecurityContext"]
    assert f"USER {pod['runAsUser']}:{pod['runAsGroup']}" in _runtime_stage()
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0


def test_one_entrypoint_serves_every_role() -> None:
    stage = _runtime_stage()
    assert 'ENTRYPOINT ["flipserve"]' in stage
    assert 'CMD ["serve"]' in stage
    assert f"EXPOSE {VALUES['server']['port']}" in stage
    assert "FLIPSERVE_MODEL_DIR=/mnt/models" in stage


def test_build_is_multi_stage_with_cpu_torch_and_no_cuda_wheels() -> None:
    assert len(re.findall(r"^FROM ", DOCKERFILE, re.MULTILINE)) == 2
    assert "https://download.pytorch.org/whl/cpu" in DOCKERFILE
    assert "nvidia-" in DOCKERFILE and "grep -vE" in DOCKERFILE  # the CUDA pins are dropped
    assert "COPY --from=build /opt/flipserve /opt/flipserve" in DOCKERFILE


def test_writable_paths_live_under_tmp_for_a_read_only_root() -> None:
    env = dict(re.findall(r"^\s+(\w+)=(\S+?)(?: \\)?$", _runtime_stage(), re.MULTILINE))
    for name in ("HOME", "HF_HOME", "MPLCONFIGDIR", "FLIPSERVE_CACHE_DIR"):
        assert env[name].startswith("/tmp"), name
    assert VALUES["securityContext"]["readOnlyRootFilesystem"] is True


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    text = (ROOT / ".dockerignore").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*", "deny everything first, then allow"
    assert {"!pyproject.toml", "!README.md", "!requirements/lock.txt", "!src/"} <= set(lines)
