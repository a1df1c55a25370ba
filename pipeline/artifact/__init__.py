"""Model artifacts, importable without Ray, pyarrow.dataset or the training config: `files` (the
checkpoint and `weights.pt` formats), `infer` (request cells and uint8 faces → logits), `load` (any
model form → `LoadedModel`), `official` (official POSTER checkpoints as project models), `pyfunc`
(the logged MLflow model) and `pyfunc_entry` (its models-from-code file). The served MLflow model
ships `poster_model` and only the `pipeline` modules `pyfunc.served_modules` finds."""
