"""A torch-free encoder for plain BERT sentence-transformers models, in numpy.

In: a sentence-transformers folder whose ``modules.json`` is exactly Transformer +
Pooling (mean or CLS) [+ Normalize], with a BERT checkpoint in ``model.safetensors``
and a fast-tokenizer ``tokenizer.json``. Out: float32 sentence embeddings equal to
``SentenceTransformer.encode``'s to about 1e-6 (the same tokenizer, weights and
arithmetic in another order), from a process that never imports torch,
transformers or sentence-transformers.

Why: on a CPU the encoder's resident memory is mostly the libraries, not the model
(torch alone is about 220 MiB, sentence-transformers and transformers another 300
MiB; all-MiniLM-L6-v2's weights are 87 MiB). The weights are read from the
safetensors file tensor by tensor (:class:`SafetensorsReader`, plain reads), the
texts tokenized with the ``tokenizers`` package, the encoder layers run as float32
matrix products on bounded row chunks, one batch per thread (:func:`encode_batches`).

The dense layers' products go through MKL's ``sgemm`` when the torch wheel carries it
(:class:`MklGemm`: ``libtorch_cpu.so`` opened with ctypes, torch itself never
imported; about 100 MiB of resident memory against torch's 200) as ONE product over
all the tokens of a batch, after a check that a row's result does not depend on its
position or on the number of rows (:func:`rows_are_position_invariant`). Otherwise
(no MKL, or a CPU whose kernels fail the check) each text gets its own product through
numpy's OpenBLAS, whose row blocking does change a row's last bits with its position:
same guarantee, slower products (docs/mining.md has the figures). With MKL, GELU's erf
is MKL's ``vsErf`` too (checked the same way: :func:`erf_is_position_invariant`). The
caller picks the product (``gemm``: ``auto``, ``mkl`` or ``openblas``;
``pairforge mine --encoder numpy-openblas``); the two give different last bits, so the
embedding cache keeps their vectors apart.

:func:`numpy_encoder_spec` says whether a folder qualifies; anything else (other
architectures, prompts, other pooling, a GPU) goes through torch
(:func:`pipeline.embed.encoders.resolve_encoder` decides).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import math
import platform
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from pipeline.devices import cpu_threads

BACKEND = "numpy"
_GELU_ACTS = ("gelu", "gelu_python")
_BERT_MODEL_TYPES = ("bert",)


@dataclass(frozen=True)
class NumpyEncoderSpec:
    """What the numpy encoder needs to know about a model folder.

    Attributes:
        transformer_dir: the folder holding ``config.json``, weights and ``tokenizer.json``.
        pooling: ``mean`` or ``cls``.
        normalize: whether the model ends with a Normalize module.
        max_seq_length: tokens per text, special tokens included (sentence-transformers' value).
    """

    transformer_dir: Path
    pooling: str
    normalize: bool
    max_seq_length: int


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def pooling_mode(pooling_config: dict) -> str | None:
    """``mean``/``cls`` from a Pooling module config (either spelling), else None."""
    mode = pooling_config.get("pooling_mode")
    if mode is None:
        flags = [
            k
            for k in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
            if pooling_config.get(f"pooling_mode_{k}")
        ]
        mode = {"cls_token": "cls", "mean_tokens": "mean"}.get(flags[0]) if len(flags) == 1 else None
    if pooling_config.get("include_prompt") is False:
        return None
    return mode if mode in ("mean", "cls") else None


def plain_stack_spec(folder: Path) -> tuple[Path, str, bool, int] | None:
    """(transformer folder, pooling, normalize, max length) of a plain Transformer + Pooling
    [+ Normalize] sentence-transformers folder without prompts; None for anything else."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        if kinds not in (["Transformer", "Pooling", "Normalize"], ["Transformer", "Pooling"]):
            return None
        transformer_dir = folder / modules[0]["path"]
        mode = pooling_mode(_read_json(folder / modules[1]["path"] / "config.json"))
        if mode is None:
            return None
        st_config = _read_json(folder / "config_sentence_transformers.json")
        if st_config.get("default_prompt_name") or any((st_config.get("prompts") or {}).values()):
            return None
        max_len = _read_json(transformer_dir / "sentence_bert_config.json").get("max_seq_length")
        if max_len is None:
            max_len = _read_json(transformer_dir / "tokenizer_config.json").get("model_max_length")
        if not isinstance(max_len, int) or not 0 < max_len <= 100_000:
            return None
        return transformer_dir, mode, len(kinds) == 3, max_len
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def numpy_encoder_spec(folder: Path) -> NumpyEncoderSpec | None:
    """The spec when ``folder`` is a plain BERT model the numpy encoder runs exactly, else None.

    Requires: the plain module stack (see :func:`plain_stack_spec`), a BERT
    ``config.json`` with absolute positions and exact GELU, ``model.safetensors``,
    ``tokenizer.json``, and a tokenizer config that does not ask for anything
    ``tokenizer.json`` does not already do.
    """
    stack = plain_stack_spec(folder)
    if stack is None:
        return None
    transformer_dir, mode, normalize, max_len = stack
    try:
        config = _read_json(transformer_dir / "config.json")
    except (OSError, ValueError):
        return None
    if (
        config.get("model_type") not in _BERT_MODEL_TYPES
        or config.get("hidden_act") not in _GELU_ACTS
        or config.get("position_embedding_type", "absolute") != "absolute"
        or config.get("is_decoder")
        or not (transformer_dir / "model.safetensors").is_file()
        or not (transformer_dir / "tokenizer.json").is_file()
    ):
        return None
    max_positions = int(config.get("max_position_embeddings", 512))
    return NumpyEncoderSpec(transformer_dir, mode, normalize, min(max_len, max_positions))


# erf as a rational function on [-4, 4] (Eigen's float32 erf; beyond 4 it is +-1 in
# float32): odd numerator, even denominator, max error about 5e-7 against float64.
_ERF_ALPHA = tuple(np.float32(a) for a in (
    -2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
    -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02,
))
_ERF_BETA = tuple(np.float32(b) for b in (
    -1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
    -1.42647390514189e-02,
))
_GELU_CHUNK = 1 << 16  # elements per pass: few numpy calls, temporaries still in the L2 cache
_ATTENTION_BYTES = 8 << 20  # attention scores held at once, per thread
_FFN_TOKENS = 1024  # tokens per feed-forward pass: (1024, 4 x hidden) float32 temporaries
# Products of fewer rows take other MKL kernels (a row's bits then differ from the same
# row in a larger product): smaller inputs are padded with zero rows up to this many.
_MIN_GEMM_ROWS = 16
_PROBE_ROWS = (16, 17, 23, 64, 333, 1024, 2053, 4099)


def mkl_library() -> Path | None:
    """The torch wheel's ``libtorch_cpu.so`` (which links MKL in) on x86-64 Linux, found
    without importing torch; None elsewhere."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "lib" / "libtorch_cpu.so"
        if candidate.is_file():
            return candidate
    return None


GEMM_CHOICES: tuple[str, ...] = ("auto", "mkl", "openblas")


def gemm_kind(asked: str = "auto") -> str:
    """How the dense products run: ``mkl`` or ``openblas`` as asked; for ``auto``, ``mkl``
    when :class:`MklGemm` can be used here, else ``openblas``.

    Raises:
        ValueError: ``asked`` is none of :data:`GEMM_CHOICES`.
    """
    if asked not in GEMM_CHOICES:
        raise ValueError(f"gemm must be one of {', '.join(GEMM_CHOICES)}, got {asked!r}")
    if asked != "auto":
        return asked
    return "mkl" if mkl_library() is not None else "openblas"


class MklGemm:
    """Row-major float32 ``x @ w`` through MKL's Fortran ``sgemm_``, single-threaded.

    MKL is statically linked into the torch wheel's ``libtorch_cpu.so`` and exported
    from it; opening the library with ctypes runs none of torch's Python. Each call
    runs on one MKL thread (``mkl_set_num_threads_local``, restored after), since
    :func:`encode_batches` already runs one batch per core.

    Raises:
        OSError: the library or its symbols are missing (not an MKL build of torch).
    """

    _lock = threading.Lock()
    _library: ctypes.CDLL | None = None

    def __init__(self, library: Path) -> None:
        with MklGemm._lock:
            if MklGemm._library is None:
                MklGemm._library = ctypes.CDLL(str(library), mode=ctypes.RTLD_LOCAL)
        self._sgemm = MklGemm._library.sgemm_
        self._sgemm.restype = None
        self._erf = MklGemm._library.vsErf  # MKL's vector math: (n, in, out), C interface
        self._erf.restype = None
        self._erf.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        # The lower-case name is the Fortran entry point: its argument is a pointer.
        self._local_threads = MklGemm._library.mkl_set_num_threads_local
        self._local_threads.restype = ctypes.c_int
        self._no_trans = ctypes.c_char(b"N")
        self._one = ctypes.c_float(1.0)
        self._zero = ctypes.c_float(0.0)

    def __call__(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """``x @ w`` for C-contiguous float32 ``x`` (rows, k) and ``w`` (k, n)."""
        rows, k = x.shape
        n = w.shape[1]
        if rows < _MIN_GEMM_ROWS:
            padded = np.zeros((_MIN_GEMM_ROWS, k), dtype=np.float32)
            padded[:rows] = x
            return self(padded, w)[:rows]
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty((rows, n), dtype=np.float32)
        # Row-major C = X W is column-major C^T = W^T X^T: the same buffers, operands swapped.
        m_, n_, k_ = ctypes.c_int(n), ctypes.c_int(rows), ctypes.c_int(k)
        one_thread = ctypes.c_int(1)
        previous = ctypes.c_int(self._local_threads(ctypes.byref(one_thread)))
        try:
            self._sgemm(
                ctypes.byref(self._no_trans), ctypes.byref(self._no_trans), ctypes.byref(m_), ctypes.byref(n_),
                ctypes.byref(k_), ctypes.byref(self._one), ctypes.c_void_p(w.ctypes.data), ctypes.byref(m_),
                ctypes.c_void_p(x.ctypes.data), ctypes.byref(k_), ctypes.byref(self._zero),
                ctypes.c_void_p(out.ctypes.data), ctypes.byref(m_),
            )
        finally:
            self._local_threads(ctypes.byref(previous))
        return out


    def erf(self, x: np.ndarray) -> np.ndarray:
        """erf of a C-contiguous float32 array (in place), by MKL's ``vsErf`` (error
        about 3e-8, six times numpy's rational approximation's speed)."""
        if x.size:
            self._erf(x.size, x.ctypes.data, x.ctypes.data)
        return x


_CHECKED_SHAPES: dict[tuple, bool] = {}  # weight shapes -> rows_are_position_invariant


def erf_is_position_invariant(erf: Callable[[np.ndarray], np.ndarray], seed: int = 0) -> bool:
    """Whether ``erf`` gives each value the same bytes at any offset of arrays of any
    length (vector code may treat an array's tail, or unaligned starts, differently)."""
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal(1 << 14) * 3).astype(np.float32)
    reference = erf(values.copy())
    for _ in range(64):
        start = int(rng.integers(0, len(values) - 1))
        end = min(len(values), start + int(rng.integers(1, 3000)))
        if not np.array_equal(erf(values[start:end].copy()), reference[start:end]):
            return False
    return True


def rows_are_position_invariant(gemm, weights: Iterable[np.ndarray], seed: int = 0) -> bool:
    """Whether ``gemm(x, w)`` gives each row of ``x`` the same bytes wherever the row sits
    and however many rows the product has (from 16 up to a few thousand), for each of
    ``weights``: checked on random rows placed at random positions."""
    rng = np.random.default_rng(seed)
    for w in weights:
        probe = rng.random((8, w.shape[0]), dtype=np.float32) - np.float32(0.5)
        background = rng.random((max(_PROBE_ROWS), w.shape[0]), dtype=np.float32) - np.float32(0.5)
        reference = None
        for rows in _PROBE_ROWS:
            x = background[:rows].copy()
            at = rng.choice(rows, size=len(probe), replace=False)
            x[at] = probe
            result = gemm(x, w)[at]
            if reference is None:
                reference = result
            elif not np.array_equal(result, reference):
                return False
    return True


def erf32(x: np.ndarray) -> np.ndarray:
    """erf of a float32 array (error below 1e-6), without scipy."""
    z = np.clip(x, np.float32(-4.0), np.float32(4.0))
    x2 = z * z
    numerator = x2 * _ERF_ALPHA[0]
    for a in _ERF_ALPHA[1:-1]:
        numerator += a
        numerator *= x2
    numerator += _ERF_ALPHA[-1]
    numerator *= z
    denominator = x2 * _ERF_BETA[0]
    for b in _ERF_BETA[1:-1]:
        denominator += b
        denominator *= x2
    denominator += _ERF_BETA[-1]
    numerator /= denominator
    return numerator


def gelu_inplace(x: np.ndarray, erf: Callable[[np.ndarray], np.ndarray] = erf32) -> np.ndarray:
    """The exact (erf) GELU of a C-contiguous float32 array, written into ``x``;
    ``erf`` maps a float32 array to a new or the same array of its erf."""
    flat = x.reshape(-1)
    for start in range(0, flat.size, _GELU_CHUNK):
        v = flat[start : start + _GELU_CHUNK]
        phi = erf(v * np.float32(1.0 / math.sqrt(2.0)))
        phi += np.float32(1.0)
        phi *= np.float32(0.5)
        v *= phi
    return x


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    var = np.mean(centered * centered, axis=-1, keepdims=True)
    centered *= 1.0 / np.sqrt(var + np.float32(eps))
    centered *= weight
    centered += bias
    return centered


_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2"}


class SafetensorsReader:
    """Tensors of a ``.safetensors`` file read one at a time, as float32 numpy arrays.

    The format is an 8-byte little-endian header length, a JSON header
    (``{name: {"dtype", "shape", "data_offsets"}}``) and the raw bytes. Plain reads, not
    a memory map: mapped file pages count in the process' resident memory until
    unmapped, and would double the weights' share of the peak while they are copied.

    Raises:
        ValueError: the file is not safetensors, or a tensor is missing or of another dtype.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle = open(self.path, "rb")  # noqa: SIM115 - closed by __exit__, or below on a bad header
        try:
            size = int.from_bytes(self._handle.read(8), "little")
            if not 0 < size < 100_000_000:
                raise ValueError(f"{self.path}: not a safetensors file (header length {size})")
            header = json.loads(self._handle.read(size))
        except (ValueError, UnicodeDecodeError) as exc:
            self._handle.close()
            raise ValueError(f"{self.path}: unreadable safetensors header ({exc})") from None
        self._data_start = 8 + size
        self._entries = {k: v for k, v in header.items() if k != "__metadata__"}
        self.names = set(self._entries)

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a C-contiguous float32 array."""
        entry = self._entries.get(name)
        if entry is None:
            raise ValueError(f"{self.path}: no weight {name}")
        dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"{self.path}: weight {name} has dtype {entry['dtype']}, not a float type")
        begin, end = entry["data_offsets"]
        self._handle.seek(self._data_start + begin)
        raw = np.frombuffer(self._handle.read(end - begin), dtype=dtype)
        if entry["dtype"] == "BF16":  # the high half of a float32
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        return np.ascontiguousarray(raw.astype(np.float32, copy=False).reshape(entry["shape"]))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self._handle.close()


def load_tokenizer(spec: NumpyEncoderSpec):
    """The model's fast tokenizer (``tokenizers.Tokenizer``): truncation at
    ``max_seq_length`` as sentence-transformers does, no padding."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(spec.transformer_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=spec.max_seq_length, strategy="longest_first")
    return tokenizer


class NumpyBertEncoder:
    """A BERT sentence encoder in numpy, with ``SentenceTransformer.encode``'s results.

    Args:
        spec: from :func:`numpy_encoder_spec`.
        gemm: ``auto``, ``mkl`` or ``openblas`` (see :func:`gemm_kind`).

    Raises:
        ValueError: a weight the model needs is missing from ``model.safetensors``.
    """

    backend = BACKEND
    device = "cpu"

    def __init__(self, spec: NumpyEncoderSpec, gemm: str = "auto") -> None:
        self.spec = spec
        self.gemm_kind = gemm_kind(gemm)
        self.max_seq_length = spec.max_seq_length
        config = _read_json(spec.transformer_dir / "config.json")
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.tokenizer = load_tokenizer(spec)
        self.gemm = "undecided"  # how dense products run; see _dense_products
        self._dense = None
        self._erf = erf32  # MKL's vsErf where the products run on MKL
        self._gemm_lock = threading.Lock()
        self._weights_path = spec.transformer_dir / "model.safetensors"
        with SafetensorsReader(self._weights_path) as weights:
            prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights.names else ""

            def take(name: str) -> np.ndarray:
                return weights.read(prefix + name)

            def dense_t(name: str) -> np.ndarray:  # nn.Linear stores (out, in); x @ W.T
                return np.ascontiguousarray(take(name + ".weight").T)

            self.word = take("embeddings.word_embeddings.weight")
            self.position = take("embeddings.position_embeddings.weight")
            self.token_type0 = take("embeddings.token_type_embeddings.weight")[0].copy()
            self.emb_ln = (take("embeddings.LayerNorm.weight"), take("embeddings.LayerNorm.bias"))
            self.blocks = []
            for i in range(self.layers):
                p = f"encoder.layer.{i}."
                qkv_w = np.concatenate(
                    [dense_t(p + "attention.self.query"), dense_t(p + "attention.self.key"), dense_t(p + "attention.self.value")],
                    axis=1,
                )
                qkv_b = np.concatenate(
                    [take(p + "attention.self.query.bias"), take(p + "attention.self.key.bias"), take(p + "attention.self.value.bias")]
                )
                self.blocks.append(
                    {
                        "qkv_w": np.ascontiguousarray(qkv_w), "qkv_b": qkv_b,
                        "out_w": dense_t(p + "attention.output.dense"), "out_b": take(p + "attention.output.dense.bias"),
                        "ln1": (take(p + "attention.output.LayerNorm.weight"), take(p + "attention.output.LayerNorm.bias")),
                        "up_w": dense_t(p + "intermediate.dense"), "up_b": take(p + "intermediate.dense.bias"),
                        "down_w": dense_t(p + "output.dense"), "down_b": take(p + "output.dense.bias"),
                        "ln2": (take(p + "output.LayerNorm.weight"), take(p + "output.LayerNorm.bias")),
                    }
                )

    def _dense_products(self):
        """The function computing ``(B, L, H) @ W`` for this run, chosen on first use.

        MKL over all the batch's tokens at once when its rows pass
        :func:`rows_are_position_invariant` on this model's weights; MKL one text at a
        time when they do not; numpy's OpenBLAS one text at a time without MKL.
        """
        with self._gemm_lock:
            if self._dense is None:
                if self.gemm_kind == "mkl":
                    library = mkl_library()
                    if library is None:
                        raise RuntimeError("the numpy encoder's MKL products need a torch wheel with libtorch_cpu.so; use --encoder numpy-openblas")
                    try:
                        gemm = MklGemm(library)
                    except (OSError, AttributeError) as error:
                        raise RuntimeError(
                            f"{library}: MKL's sgemm is not available ({error}); use --encoder numpy-openblas"
                        ) from error
                    block = self.blocks[0]
                    weights = (block["qkv_w"], block["out_w"], block["up_w"], block["down_w"])
                    shapes = tuple(w.shape for w in weights)
                    if shapes not in _CHECKED_SHAPES:  # once per process and model shape
                        _CHECKED_SHAPES[shapes] = rows_are_position_invariant(gemm, weights)
                    if _CHECKED_SHAPES[shapes]:
                        self.gemm = "mkl"
                        self._dense = lambda x, w: gemm(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[1])
                    else:
                        self.gemm = "mkl-per-text"
                        self._dense = lambda x, w: np.stack([gemm(text, w) for text in x])
                    if erf_is_position_invariant(gemm.erf):
                        self._erf = gemm.erf
                else:
                    self.gemm = "openblas-per-text"
                    self._dense = np.matmul  # (B, L, H) @ W: numpy runs one product per text
            return self._dense

    def get_embedding_dimension(self) -> int:
        """The embedding width (the model's hidden size)."""
        return self.hidden

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Last hidden states (B, L, H) of padded token ids with their attention mask.

        Every dense product gives a token's row the same bytes whatever else is in the
        batch (:meth:`_dense_products`), and attention runs per text. With unpadded
        batches (mining cuts them by token length), a text's embedding is then the same
        bytes in any batch, on any number of threads.
        """
        dense = self._dense_products()
        batch, length = ids.shape
        heads, head_dim = self.heads, self.hidden // self.heads
        x = self.word[ids] + self.position[:length] + self.token_type0
        x = _layer_norm(x, *self.emb_ln, self.eps)
        # transformers' extended mask: 0 for tokens, the dtype's minimum for padding.
        bias = np.where(mask[:, None, None, :] > 0, np.float32(0.0), np.finfo(np.float32).min).astype(np.float32)
        scale = np.float32(1.0 / math.sqrt(head_dim))
        # Attention and feed-forward run on chunks of texts of bounded size: a batch of
        # long texts would otherwise hold (batch, heads, length, length) scores at once.
        attention_rows = max(1, _ATTENTION_BYTES // (heads * length * length * 4))
        ffn_rows = max(1, _FFN_TOKENS // length)
        for block in self.blocks:
            qkv = dense(x, block["qkv_w"])
            qkv += block["qkv_b"]
            qkv = qkv.reshape(batch, length, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
            context = np.empty((batch, length, heads, head_dim), dtype=np.float32)
            for start in range(0, batch, attention_rows):
                rows = slice(start, start + attention_rows)
                q, k, v = qkv[0, rows] * scale, qkv[1, rows], qkv[2, rows]
                scores = q @ k.transpose(0, 1, 3, 2)
                scores += bias[rows]
                scores -= scores.max(axis=-1, keepdims=True)
                np.exp(scores, out=scores)
                scores /= scores.sum(axis=-1, keepdims=True)
                context[rows] = (scores @ v).transpose(0, 2, 1, 3)
            attended = dense(context.reshape(batch, length, self.hidden), block["out_w"])
            attended += block["out_b"]
            attended += x
            x = _layer_norm(attended, *block["ln1"], self.eps)
            out = np.empty_like(x)
            for start in range(0, batch, ffn_rows):
                part = x[start : start + ffn_rows]
                up = dense(part, block["up_w"])
                up += block["up_b"]
                gelu_inplace(up, self._erf)
                down = dense(up, block["down_w"])
                down += block["down_b"]
                down += part
                out[start : start + len(part)] = down
            x = _layer_norm(out, *block["ln2"], self.eps)
        return x

    def encode(self, texts: list[str], normalize_embeddings: bool = False, **_: object) -> np.ndarray:
        """Embeddings of ``texts`` as one padded batch: float32 (n, dim), L2-normalized
        when the model ends with Normalize or ``normalize_embeddings`` is set (other
        keyword arguments of ``SentenceTransformer.encode`` are accepted and ignored)."""
        if not texts:
            return np.empty((0, self.hidden), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.float32)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1.0
        tokens = self._forward(ids, mask)
        if self.spec.pooling == "cls":
            pooled = tokens[:, 0]
        else:
            summed = (tokens * mask[:, :, None]).sum(axis=1)  # per text, whatever the batch
            pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
        pooled = pooled.astype(np.float32, copy=False)
        if self.spec.normalize or normalize_embeddings:
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled = pooled / np.maximum(norms, np.float32(1e-12))
        return np.ascontiguousarray(pooled, dtype=np.float32)


def encode_batches(
    encoder: NumpyBertEncoder, batches: Iterable[list[str]], threads: int | None = None, normalize: bool = True
) -> Iterator[np.ndarray]:
    """Embeddings of each batch, in order, computed ``threads`` batches at a time.

    Each batch runs on one thread with single-threaded BLAS, so a batch's embeddings
    depend only on its own texts, never on how many threads or processes share the
    work: the same batch plan gives the same bytes on 1 core or 64, in one process or
    on a cluster. numpy releases the GIL in its kernels, so threads use every core.
    """
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, threads or cpu_threads())
    with single_threaded_blas(), ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.submit(encoder.encode, batch, normalize_embeddings=normalize))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


_BLAS_LOCK = threading.Lock()
_BLAS_USERS = 0
_BLAS_LIMITER = None


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Single-threaded BLAS for as long as any caller in this process is inside.

    The limit is process-wide; counting the callers keeps one encoding run (say, one
    of two mining tasks in a flow's threads) from restoring the threaded BLAS under
    another that is still encoding.
    """
    global _BLAS_USERS, _BLAS_LIMITER
    from threadpoolctl import threadpool_limits

    with _BLAS_LOCK:
        if _BLAS_USERS == 0:
            _BLAS_LIMITER = threadpool_limits(limits=1, user_api="blas")
        _BLAS_USERS += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS -= 1
            if _BLAS_USERS == 0 and _BLAS_LIMITER is not None:
                _BLAS_LIMITER.restore_original_limits()
                _BLAS_LIMITER = None
