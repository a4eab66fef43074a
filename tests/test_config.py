"""Settings are validated once, by the same function, at `memp init` and at every load."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from conftest import memp

from memp_cli.config import CONFIG_NAME, Config, load_config, render_config, validate_config
from memp_cli.errors import ConfigError, ExitCode, InputError
from memp_cli.model.tomlutil import line_of_key
from memp_cli.store import Store

# (section, key, value, message): each is refused at init and at load alike.
BAD = [
    ("embedder", "name", "bogus", "name must be one of minilm, hash, litellm/<model>, got 'bogus'"),
    ("embedder", "name", "litellm/", "name must be one of minilm, hash, litellm/<model>, got 'litellm/'"),
    ("embedder", "name", "minilm2", "name must be one of"),
    ("embedder", "dim", 4, "dim must be between 8 and 65536, got 4"),
    ("embedder", "dim", 256, "dim must be 384 for the minilm embedder, got 256"),
    ("index", "M", 1, "M must be between 2 and 256, got 1"),
    ("index", "ef_search", 0, "ef_search must be between 1 and 10000, got 0"),
    ("retrieval", "k", 0, "k must be between 1 and 1000, got 0"),
    ("retrieval", "key", "title", "key must be one of query, avefact, random, got 'title'"),
    ("llm", "timeout", 0.0, "timeout must be between 0.1 and 3600, got 0.0"),
    ("distill", "policy", "notes", "policy must be one of trajectory, script, proceduralization"),
]


def _bad(section: str, key: str, value: object) -> Config:
    cfg = Config()
    setattr(getattr(cfg, section), key, value)
    return cfg


@pytest.mark.parametrize(("section", "key", "value", "message"), BAD)
def test_the_same_check_refuses_at_init_and_at_load(
    tmp_path: Path, section: str, key: str, value: object, message: str
) -> None:
    cfg = _bad(section, key, value)
    with pytest.raises(InputError, match=rf"^\[{section}\] {re.escape(message)}") as init_err:
        validate_config(copy.deepcopy(cfg))
    assert not isinstance(init_err.value, ConfigError)
    with pytest.raises(InputError, match=rf"^\[{section}\] {re.escape(message)}"):
        Store.init(tmp_path / "new", cfg)
    assert not (tmp_path / "new").exists()  # refused before anything was created
    # The same settings hand-written into a store's memp.toml: refused at load, line named.
    path = tmp_path / CONFIG_NAME
    text = render_config(cfg)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as load_err:
        load_config(path)
    line = line_of_key(text, key, section)
    assert str(load_err.value).startswith(f"{path}:{line}: [{section}] {message}")


def test_good_settings_pass_and_are_normalised() -> None:
    cfg = Config()
    cfg.embedder.name, cfg.embedder.dim = "litellm/text-embedding-3-small", 1536
    cfg.retrieval.min_score = 0  # type: ignore[assignment]  # a whole number where a float goes
    validate_config(cfg)
    assert isinstance(cfg.retrieval.min_score, float)
    for name, dim in (("hash", 8), ("hash", 65536), ("minilm", 384), ("litellm/nomic-embed-text", 768)):
        cfg.embedder.name, cfg.embedder.dim = name, dim
        validate_config(cfg)


def test_the_minilm_width_matches_the_model() -> None:
    from memp_cli import config
    from memp_cli.backends.embedders import minilm

    assert config._EMBEDDER_DIM["minilm"] == minilm.DIM


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--embedder", "hash", "--dim", "4"), "[embedder] dim must be between 8 and 65536, got 4"),
        (("--embedder", "hash", "--dim", "0"), "[embedder] dim must be between 8 and 65536, got 0"),
        (
            ("--embedder", "bogus"),
            "[embedder] name must be one of minilm, hash, litellm/<model>, got 'bogus'",
        ),
        (
            ("--embedder", "minilm", "--dim", "256"),
            "[embedder] dim must be 384 for the minilm embedder, got 256",
        ),
        (("--dim", "128"), "[embedder] dim must be 384 for the minilm embedder, got 128"),
    ],
)
def test_init_refuses_what_later_commands_would(store_dir: Path, args: tuple[str, ...], message: str) -> None:
    r = memp("init", *args, expect=ExitCode.BAD_INPUT)
    assert f"memp: error: {message}" in r.stderr and "memp init --help" in r.stderr
    assert r.stdout == ""
    assert not store_dir.exists()


@pytest.mark.parametrize(
    ("args", "name", "dim"),
    [
        (("--embedder", "hash"), "hash", 256),
        (("--embedder", "hash", "--dim", "64"), "hash", 64),
        ((), "minilm", 384),
        (("--embedder", "minilm", "--dim", "384"), "minilm", 384),
        (
            ("--embedder", "litellm/text-embedding-3-small", "--dim", "1536"),
            "litellm/text-embedding-3-small",
            1536,
        ),
    ],
)
def test_init_writes_valid_settings(store_dir: Path, args: tuple[str, ...], name: str, dim: int) -> None:
    memp("init", *args)
    cfg = load_config(store_dir / CONFIG_NAME)
    assert (cfg.embedder.name, cfg.embedder.dim) == (name, dim)


def test_a_hand_edited_embedder_is_refused_by_every_command(store: Path) -> None:
    path = store / CONFIG_NAME
    text = path.read_text(encoding="utf-8").replace('name = "hash"', 'name = "bogus"')
    path.write_text(text, encoding="utf-8")
    line = line_of_key(text, "name", "embedder")
    for args in (("list",), ("stats",), ("query", "heat an egg")):
        r = memp(*args, expect=ExitCode.STORE)
        assert f"{path}:{line}: [embedder] name must be one of minilm, hash, litellm/<model>" in r.stderr
