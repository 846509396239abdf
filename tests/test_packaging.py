"""The wheel: what ``pip install inzwa-voice`` (or a container built from the wheel) gets.

The gateway must start from an installed wheel alone, with no checkout beside it: the default
dialplan, the sample knowledge base, the intents, the safety lists and the API description are
package data. The wheel
is built from a copy of the sources (the shared working tree gets no ``build/`` or egg-info),
installed into a folder and imported from there by a fresh interpreter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from inzwa_voice import __version__

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "inzwa_voice")
PACKAGE_DATA = (
    "inzwa_voice/api/openapi.yaml",
    "inzwa_voice/dialplans/default.yaml",
    "inzwa_voice/dialplans/example.yaml",
    "inzwa_voice/knowledge/data/helpline.yaml",
    "inzwa_voice/knowledge/data/intents.yaml",
    "inzwa_voice/safety/data/crisis.yaml",
    "inzwa_voice/widget/index.html",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work), str(source)], check=True)
    (built,) = work.glob("inzwa_voice-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True)
    return target


def run_installed(target: Path, code: str, tmp_path: Path) -> str:
    """Run ``code`` in a fresh interpreter that imports the package from ``target``, from an empty
    folder, with no ``INZWA_*`` setting: as a wheel install without a checkout starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INZWA_")}
    env["PYTHONPATH"] = str(target)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_wheel_holds_the_default_dialplan_and_the_sample_knowledge(wheel: Path) -> None:
    assert wheel.name.startswith(f"inzwa_voice-{__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in PACKAGE_DATA if name not in names]
    assert not missing, f"the wheel lacks {missing}"
    assert not [n for n in names if n.startswith(("tests/", "dialplans/"))]


def test_an_installed_wheel_loads_its_default_dialplan_and_knowledge(installed: Path, tmp_path: Path) -> None:
    out = run_installed(
        installed,
        """
        from pathlib import Path

        import yaml

        import inzwa_voice
        from inzwa_voice.api.system import OPENAPI_PATH
        from inzwa_voice.config import Settings
        from inzwa_voice.dialplan import DEFAULT_DIALPLAN, Dialplan
        from inzwa_voice.knowledge.loader import DEFAULT_KNOWLEDGE, load_intents, load_knowledge
        from inzwa_voice.safety import Safety, SafetyConfig

        settings = Settings(_env_file=None)
        assert settings.dialplan_path is None
        dialplan = Dialplan.load(settings.dialplan_path or DEFAULT_DIALPLAN)
        dialplan.check(voices={p.voice for p in dialplan.profiles.values()}, languages=settings.languages)
        bases = {p.knowledge for p in dialplan.profiles.values()} - {None}
        assert bases == {"helpline"}, bases
        base = load_knowledge(DEFAULT_KNOWLEDGE, intents=load_intents())
        Safety.load(config=SafetyConfig(helpline_number=settings.helpline_number))
        assert not OPENAPI_PATH.is_symlink() and yaml.safe_load(OPENAPI_PATH.read_text())["paths"]
        print(Path(inzwa_voice.__file__).parent)
        print(Path(dialplan.path).resolve())
        print(dialplan.default.profile.name, len(base.entries))
        """,
        tmp_path,
    )
    package, dialplan_path, summary = out.splitlines()
    assert Path(package) == installed / "inzwa_voice"
    assert Path(dialplan_path) == installed / "inzwa_voice" / "dialplans" / "default.yaml"
    profile, entries = summary.split()
    assert profile == "shona_helpline"
    assert int(entries) > 0


def test_the_installed_command_prints_its_version(installed: Path, tmp_path: Path) -> None:
    out = run_installed(installed, "from inzwa_voice.cli import main; main(['--version'])", tmp_path)
    assert out.strip() == f"inzwa-voice {__version__}"
