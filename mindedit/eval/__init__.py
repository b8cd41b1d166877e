"""Evaluation: perplexity, teacher-vs-student metrics, generation speed, reports."""
