"""trainer: LoRA CTC fine-tuning from a featstore store."""
