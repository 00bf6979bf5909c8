"""dnd_eval: OCR evaluation of generated images, tokenizer reconstructions and the dataset (`dnd eval`)."""
