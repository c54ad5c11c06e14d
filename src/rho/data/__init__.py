"""Corpus files -> TokenStore: reading, tokenizing, chat messages; training batches."""
