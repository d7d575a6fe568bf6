"""The judge: constitution-guided critiques, revisions and pairwise preference labels.

- `config`: JudgeConfig (the model and its engine) and FeedbackConfig (pydantic only);
- `templates`: the prompt templates (versioned; the version is stored with every row) and
  the prompt markers a constitution must not contain;
- `judge`: the Judge, a client of an engine (rlaif.engines: transformers, vllm, openai) that
  asks in the judge's own chat template and reads answers from next-token probabilities;
- `feedback`: critique->revision rounds and debiased pairwise preferences;
- `human_eval`: how often the judge agrees with human labels.
"""
