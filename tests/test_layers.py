"""The import contract: layers point one way, and importing a leg or the engine runtime loads no model.

``lint-imports`` checks the contracts in pyproject.toml (``[tool.importlinter]``); a copy of the
package with one layer-breaking import proves the check can fail, and fresh interpreters prove
what an import really loads (import-linter sees only imports written in our code, not what a
library pulls in behind them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
HEAVY = ("faster_whisper", "llama_cpp", "onnxruntime", "piper", "av", "pjsua2", "tokenizers")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_its_import_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "imported", "refusal"),
    [
        (
            "inzwa_voice.media.playout",
            "inzwa_voice.conversation.ports",
            "inzwa_voice.media is not allowed to import inzwa_voice.conversation",
        ),
        # The knowledge base's matcher takes sentence vectors, never the embedding engine.
        (
            "inzwa_voice.knowledge.match",
            "inzwa_voice.engines.embedding.minilm",
            "inzwa_voice.knowledge is not allowed to import inzwa_voice.engines",
        ),
    ],
)
def test_a_layer_breaking_import_fails_the_contract(tmp_path: Path, module: str, imported: str, refusal: str) -> None:
    shutil.copytree(ROOT / "inzwa_voice", tmp_path / "inzwa_voice", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = (tmp_path / module.replace(".", "/")).with_suffix(".py")
    path.write_text(path.read_text(encoding="utf-8") + f"\nimport {imported}\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert refusal in result.stdout
    assert f"{module} -> {imported}" in result.stdout


@pytest.mark.parametrize(
    "module", ["inzwa_voice.legs.twilio", "inzwa_voice.engines.runtime", "inzwa_voice.knowledge.evaluate"]
)
def test_importing_it_loads_no_model_library(module: str) -> None:
    probe = f"import {module}, sys; print([m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
