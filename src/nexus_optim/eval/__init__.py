"""Evaluation: validation losses / bits per byte (`losses`), downstream tasks (`tasks`),
model primitives (`lm`), HF export (`export`), lm-eval data (`lm_eval_data`), `nexus eval` (`run`);
loss-landscape geometry (`geometry*`) and statistics (`stats`)."""
