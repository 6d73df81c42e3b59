"""Evaluation: validation losses / bits per byte (`losses`), downstream tasks (`tasks`),
model primitives (`lm`), HF export (`export`), lm-eval data (`lm_eval_data`), `nexus eval` (`run`);
loss-landscape geometry (`geometry*`), the chord of a loss curve along a line (`lines`)
and statistics (`stats`)."""
