"""SFT, distillation and GRPO over datasets read from the lake (see ../shared/DESIGN.md).

Not built yet: the trainer issues fill this package. Torch is imported only here and in the
local-model teacher.
"""
