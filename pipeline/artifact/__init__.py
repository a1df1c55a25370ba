"""Model artifacts, importable without Ray, pyarrow.dataset or the training config: `files` (the
checkpoint and `weights.pt` formats), `infer` (uint8 faces → logits). The served MLflow model ships
`poster_model` and this package."""
