"""The quality axis: sampling, PII masking, evaluators (checks, reference metrics, LLM judge),
judge versioning and calibration, and the eval worker. See docs/evaluation.md."""
