"""Pretrained face recognizers ported to PyTorch, used as distillation
teachers at training time only (never shipped, never imported by engine/)."""
