"""Judging models: fine-tuning on labelled sequences (``finetune``), the GUE suite (``gue``), quality by context
length (``context``)."""
