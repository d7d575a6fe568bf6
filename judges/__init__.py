"""The judge: constitution-guided critiques, revisions and pairwise preference labels.

- `config`: JudgeConfig (the model and its backend) and FeedbackConfig (pydantic only);
- `templates`: the prompt templates (versioned; the version is stored with every row) and
  the prompt markers a constitution must not contain;
- `backends`: where the judge model runs (`transformers` in process, the default; `vllm`;
  `openai` over HTTP);
- `feedback`: critique->revision rounds and debiased pairwise preferences;
- `human_eval`: how often the judge agrees with human labels.
"""
