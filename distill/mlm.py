"""DistilBERT's general distillation: BERT masking, soft KL over the vocabulary, masked-LM cross-entropy.

The teacher is a checkpoint with a masked-LM head (``BertForMaskedLM``); the student is any
``conf/student`` preset turned into a masked-LM model (:func:`masked_lm_student`). Batches come from
:func:`mask_batch`: ``input_ids`` with BERT's 80/10/10 corruption, ``mlm_labels`` (the original id at
chosen positions, -100 elsewhere) and ``mlm_mask`` (the chosen positions). The loss is the usual
:class:`~distill.losses.DistillationObjective` with :class:`MaskedSoftKL` as ``soft`` (the fused
:func:`~distill.kernels.softmax_kl` with ``mask=``: its (B, T, V) hot path), :class:`MaskedLMLoss` as
``hard`` and :class:`~distill.losses.HiddenCosine` as a term — DistilBERT's triple loss.
DistilBERT also smooths masking probabilities by token frequency; plain uniform masking is used here.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, PreTrainedModel

from distill.errors import ConfigError
from distill.kernels.softmax_kl import softmax_kl
from distill.losses._common import token_mask
from distill.models.teacher import load_config

IGNORE = -100
_MLM_ARCHITECTURES = ("ForMaskedLM", "ForPreTraining")


# ---- masking -----------------------------------------------------------------------------------
def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT's masking of ``input_ids`` (B, T) int64 at ``maskable`` (B, T) bool positions.

    Each maskable position is chosen with probability ``mask_prob``; a chosen position becomes
    ``mask_token_id`` (80 %), a uniformly random id below ``vocab_size`` (10 %) or stays (10 %).
    Returns ``(inputs, labels, chosen)``: corrupted ids (B, T) int64, labels (B, T) int64 holding the
    original id where chosen and -100 elsewhere, and the chosen positions (B, T) bool.
    """
    if not 0.0 < mask_prob < 1.0:
        raise ConfigError(f"general.mask_prob={mask_prob} must be between 0 and 1.")
    shape = input_ids.shape
    chosen = (torch.rand(shape, generator=generator) < mask_prob).to(input_ids.device) & maskable  # (B, T)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))  # (B, T)
    how = torch.rand(shape, generator=generator).to(input_ids.device)  # (B, T) in [0, 1)
    random_ids = torch.randint(vocab_size, shape, generator=generator).to(input_ids.device)  # (B, T)
    inputs = torch.where(chosen & (how < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_ids, inputs)  # (B, T)
    return inputs, labels, chosen


def mask_batch(batch: dict[str, torch.Tensor], tokenizer, mask_prob: float,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A padded batch with ``input_ids`` masked and ``mlm_labels``/``mlm_mask`` added (specials and padding never masked)."""
    ids = batch["input_ids"]  # (B, T)
    real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
    special = torch.isin(ids, torch.tensor(sorted(tokenizer.all_special_ids), dtype=ids.dtype))  # (B, T)
    if tokenizer.mask_token_id is None:
        raise ConfigError("the teacher's tokenizer has no [MASK] token; masked-LM distillation needs one.")
    inputs, labels, chosen = mask_tokens(ids, real & ~special, mask_token_id=tokenizer.mask_token_id,
                                         vocab_size=len(tokenizer), mask_prob=mask_prob, generator=generator)
    return {**batch, "input_ids": inputs, "mlm_labels": labels, "mlm_mask": chosen}


# ---- losses ------------------------------------------------------------------------------------
def _vocab_logits(output, owner: str) -> torch.Tensor:
    logits = output.logits  # (B, T, V)
    if logits.dim() != 3:
        raise ConfigError(f"{owner} needs masked-LM models (logits (B, T, V)); got logits of shape {tuple(logits.shape)}.")
    return logits


class MaskedSoftKL(nn.Module):
    """``T²·KL(softmax(t/T) ‖ softmax(s/T))`` over the vocabulary, averaged over the selected positions.

    ``positions: masked`` (DistilBERT's ``restrict_ce_to_mask``) uses the batch's ``mlm_mask``;
    ``tokens`` every real token. Logits (B, T, V); computed by :func:`softmax_kl` with ``mask=`` (B, T)
    and ``backend`` (``auto``: Triton on CUDA, the chunked PyTorch path on CPU). A batch with no
    selected position gives 0.
    """

    requires: frozenset[str] = frozenset()

    def __init__(self, positions: str = "masked", t2_scale: bool = True, backend: str = "auto") -> None:
        super().__init__()
        if positions not in ("masked", "tokens"):
            raise ConfigError(f"MaskedSoftKL.positions={positions!r} is not one of masked, tokens.")
        self.positions, self.t2_scale, self.backend = positions, t2_scale, backend

    def forward(self, student, teacher, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        s, t = _vocab_logits(student, "MaskedSoftKL"), _vocab_logits(teacher, "MaskedSoftKL")  # (B, T, V) each
        if self.positions == "tokens":
            mask = token_mask(batch, tuple(s.shape[:2]), s.device)  # (B, T)
        elif "mlm_mask" in batch:
            mask = batch["mlm_mask"].to(s.device)  # (B, T)
        else:
            raise RuntimeError("MaskedSoftKL(positions=masked) needs batches from distill.mlm.mask_batch (mlm_mask).")
        return softmax_kl(s, t, temperature, mask=mask, t2_scale=self.t2_scale, backend=self.backend)


class MaskedLMLoss(nn.Module):
    """Masked-LM cross-entropy of the student against the original ids (``mlm_labels``, -100 ignored).

    Logits (B, T, V); only the M labelled rows are gathered before the float32 cross-entropy. A batch
    without masked positions gives 0.
    """

    requires: frozenset[str] = frozenset()

    def forward(self, student, teacher, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        logits = _vocab_logits(student, "MaskedLMLoss")  # (B, T, V)
        if "mlm_labels" not in batch:
            raise RuntimeError("MaskedLMLoss needs batches from distill.mlm.mask_batch (mlm_labels).")
        labels = batch["mlm_labels"].to(logits.device)  # (B, T)
        keep = labels != IGNORE  # (B, T)
        if not bool(keep.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits[keep].float(), labels[keep])  # (M, V), (M,) -> ()


# ---- models ------------------------------------------------------------------------------------
def load_mlm_teacher(name_or_path: str, key: str = "teacher.name_or_path") -> PreTrainedModel:
    """The teacher with its masked-LM head, frozen in eval mode; a ConfigError when it has none."""
    refusal = ConfigError(
        f"{key}={name_or_path} has no masked-LM head; mlm_distill needs a BertForMaskedLM checkpoint."
    )
    config = load_config(name_or_path)
    if not any(a.endswith(_MLM_ARCHITECTURES) for a in (config.architectures or [])):
        raise refusal
    model, info = AutoModelForMaskedLM.from_pretrained(name_or_path, output_loading_info=True)
    prefix = model.base_model_prefix + "."
    if [k for k in info["missing_keys"] if not k.startswith(prefix) and "decoder" not in k]:
        raise refusal
    return model.eval()


def classifier_view(mlm_model: PreTrainedModel) -> PreTrainedModel:
    """A sequence classifier carrying the masked-LM model's encoder weights, for the ``conf/student`` builders.

    The builders take a classifier teacher (e.g. ``distil_student`` copies every other layer of it);
    the pooler and classifier of the view are random (a masked-LM model has neither).
    """
    view = AutoModelForSequenceClassification.from_config(copy.deepcopy(mlm_model.config))
    view.base_model.load_state_dict(mlm_model.base_model.state_dict(), strict=False)
    return view


def masked_lm_student(student: PreTrainedModel, teacher: PreTrainedModel) -> PreTrainedModel:
    """``student`` (a classifier from a ``conf/student`` builder) as a masked-LM model of the same geometry.

    The encoder comes from ``student``; the prediction head's transform and bias come from the teacher
    where the shapes agree (a student of the teacher's width, like DistilBERT's), else stay random.
    The decoder weight is tied to the student's own word embeddings.
    """
    model = AutoModelForMaskedLM.from_config(copy.deepcopy(student.config))
    model.base_model.load_state_dict(student.base_model.state_dict(), strict=False)  # drops the pooler
    own = model.state_dict()
    prefix = teacher.base_model_prefix + "."
    head = {k: v for k, v in teacher.state_dict().items()
            if not k.startswith(prefix) and "decoder.weight" not in k and k in own and own[k].shape == v.shape}
    model.load_state_dict(head, strict=False)
    return model
