"""The judge: constitution-guided critiques, revisions and pairwise preference labels.

- `templates`: the prompt templates (versioned; the version is stored with every row);
- `backends`: where the judge model runs (`transformers` in process, the default);
- `feedback`: critique->revision rounds and debiased pairwise preferences.
"""
