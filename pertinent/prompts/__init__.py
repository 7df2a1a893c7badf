"""Prompt assembly: counting tokens with the target model's tokenizer and packing a context."""
