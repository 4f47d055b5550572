"""A toy export target that lives in the tests: the checkpoint's weights as float32 arrays in an ``.npz``,
its I/O contract beside them, run by our PyTorch reference over those arrays. It exists to prove that a
target is one package plus one registration: no generic module of xlstm_export knows it."""
