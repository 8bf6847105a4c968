"""SFT, distillation and GRPO over datasets read from the lake (the README's "Training and evaluating a student").

    torchrun --nproc-per-node 8 -m trainer.sft recipes/train/sft.yaml
    factory train distill recipes/train/distill.yaml --nproc-per-node 8

Recipes (each a pydantic `Config`, `load_config(path)`, `train(config) -> dict`, `main(argv)`):
sft.py (SFT and sequence-level distillation), distill.py (logit KD: forward/reverse KL,
generalized JSD, on-policy GKD; offline sparse top-k KD), grpo.py.

Shared pieces, with stable APIs the recipes import:
- config.py: config sections (model, data, optim, loop, checkpoint, distributed, metrics) and
  `load_yaml(path, Config)` (BadInput naming the file and key path).
- model.py: `load_tokenizer(path)`, `build_model(ModelConfig, tokenizer, device)` (the embedded
  SmolLM2 GGUF, a .gguf file, a local HF folder, or a tiny random Llama/Qwen2), `apply_lora`, `decoder_layers`.
- data.py: rows from a lake dataset / SELECT / JSONL, chat-template tokenisation with the loss on
  the assistant turn, the template lint.
- packing.py: best-fit-decreasing packing, the deterministic step plan, `collate`.
- losses.py: token NLL and weighting, forward/reverse KL, generalized JSD, sparse KD, the GRPO
  loss and advantages.
- distributed.py: `init_distributed` (torchrun env; gloo on CPU, nccl on CUDA), `shard_model`
  (FSDP2 fully_shard, bf16 MixedPrecisionPolicy, activation checkpointing).
- prompts.py: GRPO's prompts (a JSONL file or lake problems in a pass-rate band) and their
  seeded per-rank stream.
- optim.py: `build_optimizer` (AdamW, no decay on biases/norms), `build_scheduler`, `clip_gradients`.
- loop.py: `fit` (the SFT/KD loop).
- checkpoint.py: `save_checkpoint` / `load_checkpoint` (DCP model+optimizer, scheduler, RNG,
  data position; a one-group GRPO optimizer from before optim.py resumes too; mirrored to the artifact store, local or S3), `export_hf`.
- metrics.py: `MetricsWriter` (metrics.csv + TensorBoard), `read_metrics`.
- launch.py: torchrun / Slurm command lines (no torch import; the CLI uses it).

Torch is imported only here and in the local-model teacher.
"""
