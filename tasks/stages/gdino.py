"""Open-vocabulary detector stage: Grounding DINO through ``transformers``, prompted by the ontology's text.

The prompts of every ontology class (``prompts``, default the name) are joined
into one caption, ``"forklift . fork lift truck . pallet ."``; the tokens of
each prompt form its span. For each of the model's queries:

1. a prompt's score is the highest sigmoid token logit inside its span; the
   query takes the best prompt, and that prompt's class (synonyms -> one id);
2. tokens outside every span (separators, special tokens, padding) never give
   a class: a query whose strongest token is one of them is dropped, so no
   phrase outside the ontology is ever turned into a label (the library's
   ``post_process_grounded_object_detection`` returns free text phrases instead);
3. keep when the score reaches the class's threshold (``thresholds``, else
   ``conf``); boxes (normalised ``cx, cy, w, h`` of the image itself, the
   processor's batch padding excluded) to XYXY pixels; NMS as for OWL.

Weights: a ``save_pretrained`` directory or ``hub:<org>/<name>`` from the local cache.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from segflow.tasks.io.weights import WeightsError
from segflow.tasks.record import Detections
from segflow.tasks.stages.device import resolve_device
from segflow.tasks.stages.owl import prompt_table, select_detections

if TYPE_CHECKING:
    from segflow.tasks.stages.settings.owl import OwlStage


__all__ = ["GroundingDinoDetector", "caption_spans", "query_classes"]


def caption_spans(tokenizer: Any, texts: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The caption ``"a . b . c ."`` and, per prompt, its token span ``[start, end)`` in the tokenized caption."""
    caption = " . ".join(t.strip().lower() for t in texts) + " ."
    enc = tokenizer(caption, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    spans, pos = [], 0
    for t in texts:
        t = t.strip().lower()
        start_char = caption.index(t, pos)
        end_char = start_char + len(t)
        pos = end_char
        toks = [i for i, (a, b) in enumerate(offsets) if b > a and a >= start_char and b <= end_char]
        if not toks:
            raise ValueError(f"prompt {t!r} has no tokens in the model's vocabulary")
        spans.append((toks[0], toks[-1] + 1))
    return caption, spans


def query_classes(
    token_probs: np.ndarray, spans: list[tuple[int, int]], owners: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: ontology id (-1 = its strongest token is outside every prompt: rejected) and score.

    Arguments:
      token_probs: Q x T sigmoid token scores.
      spans: per prompt, its token span.
      owners: per prompt, its ontology id.
    """
    per_prompt = np.stack([token_probs[:, a:b].max(1) for a, b in spans], 1)  # Q x P
    best = per_prompt.argmax(1)
    score = per_prompt[np.arange(len(best)), best]
    in_span = np.zeros(token_probs.shape[1], bool)
    for a, b in spans:
        in_span[a:b] = True
    strongest_inside = in_span[token_probs.argmax(1)]
    return np.where(strongest_inside, owners[best], -1), score.astype(np.float32)


class GroundingDinoDetector:
    """``grounding_dino``: images + the ontology's text prompts -> boxes, class ids, scores."""

    role = "detector"

    def __init__(
        self, stage: OwlStage, weights_path: str, ontology: dict[int, str], prompts: dict[int, list[str]] | None = None
    ):
        import torch
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        self.stage = stage
        self.device = torch.device(resolve_device(stage.device))
        try:
            self.model = (
                GroundingDinoForObjectDetection.from_pretrained(weights_path, local_files_only=True)
                .eval()
                .to(self.device)
            )
            self.processor = AutoProcessor.from_pretrained(weights_path, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise WeightsError(
                f"{weights_path}: cannot load a Grounding DINO model and processor: {str(e).splitlines()[0]}"
            ) from None
        texts, self.owners = prompt_table(prompts or {cid: [name] for cid, name in ontology.items()})
        self.caption, self.spans = caption_spans(self.processor.tokenizer, texts)
        by_name = {v: k for k, v in ontology.items()}
        self.thresholds = {by_name[n]: float(t) for n, t in dict(getattr(stage, "thresholds", {}) or {}).items()}
        self.rejected = 0  # queries dropped because their strongest token was outside every prompt
        self._lock = threading.Lock()

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        import torch

        out: list[Detections] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(images), self.stage.batch_size):
                batch = [
                    im if im.flags.writeable else im.copy() for im in images[start : start + self.stage.batch_size]
                ]
                inputs = self.processor(images=batch, text=[self.caption] * len(batch), return_tensors="pt")
                res = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
                probs = res.logits.float().sigmoid().cpu().numpy()  # B x Q x max_text_len
                boxes = res.pred_boxes.float().cpu().numpy()
                for j, im in enumerate(batch):
                    cls, score = query_classes(probs[j], self.spans, self.owners)
                    self.rejected += int((cls < 0).sum())
                    out.append(
                        select_detections(
                            im.shape[:2], boxes[j], cls, score, self.stage, self.thresholds, padded_square=False
                        )
                    )
        return out
