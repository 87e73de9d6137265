import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from distill.data.tasks import get_task
from distill.losses import DistillationObjective, HardLabelLoss, SoftTargetKL
from distill.module import DistillationModule


def _bert(layers, hidden, seed):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(vocab_size=60, hidden_size=hidden, num_hidden_layers=layers,
                                                    num_attention_heads=2, intermediate_size=2 * hidden))


def _module(alpha=0.5):
    objective = DistillationObjective(soft=SoftTargetKL(backend="torch"), hard=HardLabelLoss(), alpha=alpha, temperature=2.0)
    return DistillationModule(_bert(1, 16, 0), _bert(2, 32, 1), get_task("sst2"), objective=objective,
                              optimizer=lambda p: torch.optim.SGD(p, lr=0.1))


def _batch():
    ids = torch.randint(5, 60, (4, 7))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}


def test_training_step_updates_student_only_and_matches_formula():
    torch.manual_seed(0)
    module = _module()
    module.train()
    assert not module.teacher.training  # teacher stays in eval mode
    batch = _batch()
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    opt = module.configure_optimizers()
    student_before = [p.clone() for p in module.student.parameters()]
    loss = module.training_step(batch, 0)
    assert loss.requires_grad and loss.ndim == 0
    loss.backward()
    opt.step()
    for k, v in module.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k])
    assert all(p.grad is None for p in module.teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(module.student.parameters(), student_before))


def test_objective_value_hand_computed():
    class Out:
        def __init__(self, logits):
            self.logits = logits

    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[2.0, 0.0]])
    obj = DistillationObjective(soft=SoftTargetKL(backend="torch"), hard=HardLabelLoss(), alpha=0.25, temperature=2.0)
    total, parts = obj(Out(s), Out(t), {"labels": torch.tensor([0])}, 0, 10)
    p = torch.softmax(t / 2, -1)[0]
    kl = float((p * (p.log() - torch.log(torch.tensor([0.5, 0.5])))).sum()) * 4  # T² = 4
    ce = float(torch.log(torch.tensor(2.0)))
    assert float(parts["soft"]) == pytest.approx(kl, rel=1e-5)
    assert float(parts["hard"]) == pytest.approx(ce, rel=1e-6)
    assert float(total) == pytest.approx(0.25 * kl + 0.75 * ce, rel=1e-5)


def test_checkpoint_has_no_teacher_weights_and_reloads():
    module = _module()
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert ckpt["state_dict"] and not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    fresh = _module()
    with torch.no_grad():
        for p in fresh.student.parameters():
            p.add_(1.0)
    fresh.load_state_dict(ckpt["state_dict"])  # strict: student restored, teacher taken from the live one
    for a, b in zip(fresh.student.parameters(), module.student.parameters()):
        assert torch.equal(a, b)


def test_alpha_zero_skips_teacher():
    module = _module(alpha=0.0)
    module.objective.soft = None
    assert module.teacher_forward(_batch()) is None


def test_fit_start_turns_student_dropout_on_and_keeps_teacher_eval():
    module = _module()
    module.student.eval()  # as from_pretrained returns it
    module.on_fit_start()
    assert module.student.training and all(m.training for m in module.student.modules())
    assert not any(m.training for m in module.teacher.modules())
