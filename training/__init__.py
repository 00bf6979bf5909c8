"""dnd_training: DnD transformer, RQ tokenizer, data, training loops, reference sampler (torch)."""
