"""Host- and device-side helpers for language models: tokenizers from a local file and a numpy greedy decode
loop over the split ONNX graphs (vision, prefill, decode step) that on-device LLM runtimes use.

numpy + onnxruntime + `tokenizers` only (never torch), so the same loop runs inside a device runner.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeopt.errors import EdgeoptError

EOS_TOKEN = "<|endoftext|>"  # Phi-2's (CodeGen's) end-of-text token, also TinyGPT-V's


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise EdgeoptError("reading tokenizer.json needs the `tokenizers` package", "pip install 'edgeopt[vlm]'") from None
    return tokenizers


def load_tokenizer(path: str | Path) -> Any:
    """A HF `tokenizers` Tokenizer from a local tokenizer.json (no hub, no network)."""
    p = Path(path)
    if not p.is_file():
        raise EdgeoptError(
            f"tokenizer file {p} does not exist",
            "pass the path of a local tokenizer.json (e.g. Phi-2's, from the model's folder)",
        )
    try:
        return _tokenizers().Tokenizer.from_file(str(p))
    except Exception as e:  # noqa: BLE001 - any parse failure means the file is not a tokenizer
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgeoptError(f"cannot read tokenizer {p}: {first}", "expected a HF tokenizers JSON file (tokenizer.json)") from None


def train_tokenizer(texts: Iterable[str], vocab_size: int, path: str | Path | None = None) -> Any:
    """Train a small byte-level BPE on `texts` (deterministic); save it as tokenizer.json when `path` is given.

    Used for sample inputs of random-weight models and by tests: a real tokenizer, trained in milliseconds."""
    tk = _tokenizers()
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tk.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    if path is not None:
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tok.save(str(tmp))
        tmp.replace(p)
    return tok


def encode(tokenizer: Any, text: str) -> np.ndarray:
    """Token ids of `text` as int64 (1, n)."""
    return np.asarray([tokenizer.encode(text).ids], dtype=np.int64)


class Generator(Protocol):
    """A greedy token loop over a generative bundle's graphs, as a backend opens it (`Backend.load_generator`)."""

    def encode_image(self, image: np.ndarray) -> np.ndarray: ...

    def first_step(self, image_embeds: np.ndarray, prefix_ids: np.ndarray, suffix_ids: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]: ...

    def step(self, token: int, past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]: ...

    def generate(self, image: np.ndarray, prefix_ids: np.ndarray, suffix_ids: np.ndarray,
                 max_new_tokens: int = 16, eos_token_id: int | None = None) -> list[int]: ...

    def greedy(self, logits: np.ndarray, past: dict[str, np.ndarray], max_new_tokens: int = 16, eos_token_id: int | None = None) -> list[int]: ...

    def close(self) -> None: ...


class OnnxVLM:
    """Greedy generation over three ONNX files: vision -> prefill -> decode step (K/V cache in and out).

    The graphs' input/output names are the ones edgeopt's TinyGPT-V specs export: vision `image` ->
    `image_embeds`; prefill (`image_embeds`, `prefix_ids`, `suffix_ids`) -> `logits`, `present.{i}.key`,
    `present.{i}.value`; decode (`input_ids`, `past.{i}.key`, `past.{i}.value`) -> the same outputs.
    """

    def __init__(self, vision: str | Path, prefill: str | Path, decode: str | Path, threads: int | None = None) -> None:
        from edgeopt._ort import ort_session

        self.vision = ort_session(vision, threads)
        self.prefill = ort_session(prefill, threads)
        self.decode = ort_session(decode, threads)
        self._past_names = [i.name for i in self.decode.get_inputs() if i.name.startswith("past.")]
        self._dec_out = [o.name for o in self.decode.get_outputs()]
        self._pre_out = [o.name for o in self.prefill.get_outputs()]

    def close(self) -> None:
        """Release the three sessions."""
        self.vision = self.prefill = self.decode = None

    def encode_image(self, image: np.ndarray) -> np.ndarray:
        return self.vision.run(None, {"image": np.ascontiguousarray(image, dtype=np.float32)})[0]

    def first_step(self, image_embeds: np.ndarray, prefix_ids: np.ndarray, suffix_ids: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        outs = dict(zip(self._pre_out, self.prefill.run(
            self._pre_out, {"image_embeds": image_embeds, "prefix_ids": prefix_ids, "suffix_ids": suffix_ids}), strict=True))
        return outs["logits"], {n.replace("present.", "past.", 1): v for n, v in outs.items() if n.startswith("present.")}

    def step(self, token: int, past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        feed = {"input_ids": np.asarray([[token]], dtype=np.int64), **{n: past[n] for n in self._past_names}}
        outs = dict(zip(self._dec_out, self.decode.run(self._dec_out, feed), strict=True))
        return outs["logits"], {n.replace("present.", "past.", 1): v for n, v in outs.items() if n.startswith("present.")}

    def generate(
        self, image: np.ndarray, prefix_ids: np.ndarray, suffix_ids: np.ndarray,
        max_new_tokens: int = 16, eos_token_id: int | None = None,
    ) -> list[int]:
        """Greedy tokens (batch 1), stopping after `eos_token_id` or `max_new_tokens`."""
        logits, past = self.first_step(self.encode_image(image), prefix_ids, suffix_ids)
        return self.greedy(logits, past, max_new_tokens, eos_token_id)

    def greedy(self, logits: np.ndarray, past: dict[str, np.ndarray], max_new_tokens: int = 16, eos_token_id: int | None = None) -> list[int]:
        """Greedy tokens from a first step's logits and cache, stopping after `eos_token_id` or `max_new_tokens`."""
        tokens: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(np.argmax(logits[0]))
            tokens.append(nxt)
            if eos_token_id is not None and nxt == eos_token_id:
                break
            logits, past = self.step(nxt, past)
        return tokens

    def text_nll(self, image: np.ndarray, prefix_ids: np.ndarray, suffix_ids: np.ndarray, text_ids: Sequence[int]) -> list[float]:
        """Negative log-likelihood of each token of `text_ids` as the answer (teacher forcing through the cache).

        exp(mean) is the perplexity of the text under the model: the `language_model` fidelity metric's
        perplexity change when a text sample is available."""
        from edgeopt.fidelity import log_softmax

        logits, past = self.first_step(self.encode_image(image), prefix_ids, suffix_ids)
        nll: list[float] = []
        for i, tid in enumerate(text_ids):
            nll.append(float(-log_softmax(np.asarray(logits[0], np.float64))[int(tid)]))
            if i + 1 < len(text_ids):
                logits, past = self.step(int(tid), past)
        return nll
