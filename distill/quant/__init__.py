"""Int8 quantization of students: QAT (torchao fake quant, then convert), PTQ, save/load.

Typical use::

    from distill.quant import QATCallback, convert_qat, ptq_dynamic_int8, save_int8, load_int8

    trainer = Trainer(callbacks=[QATCallback(start_fraction=0.25)])   # student fake-quantized in training
    int8 = convert_qat(module.student)                                 # real int8 copy (QAT)
    ptq = ptq_dynamic_int8(fp32_student)                               # real int8 copy (PTQ baseline)
    save_int8(int8, "run/student-int8", tokenizer)
    model = load_int8("run/student-int8")                              # one-line loader
"""

from distill.quant.callback import QATCallback
from distill.quant.core import (
    SUPPORTED_LAYERS,
    Int8Embedding,
    check_quantizable,
    convert_qat,
    fake_quant_enabled,
    int8_modules,
    is_int8,
    is_qat_prepared,
    prepare_qat,
    ptq_dynamic_int8,
    set_fake_quant_enabled,
    strip_fake_quant,
)
from distill.quant.io import load_int8, save_int8

__all__ = [
    "SUPPORTED_LAYERS", "Int8Embedding", "QATCallback", "check_quantizable", "convert_qat", "fake_quant_enabled", "int8_modules",
    "is_int8", "is_qat_prepared", "load_int8", "prepare_qat", "ptq_dynamic_int8", "save_int8",
    "set_fake_quant_enabled", "strip_fake_quant",
]
