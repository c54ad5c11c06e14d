"""Offline selection of whole documents or windows: by score, or by prototypes."""
