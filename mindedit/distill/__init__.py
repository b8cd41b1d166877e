"""Progressive distillation: stage 1 (layer-wise, teacher-forced) and stage 2 (model-level KL)."""
