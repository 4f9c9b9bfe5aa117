"""The checkpoint and file formats the plugin reads and writes: fairseq checkpoints (read
weights-only, with the allow-list), their kinds (pretraining, fine-tuned), upstream checkpoints a
run starts from (`init_from`), and bundle and adapter files. The lowest sub-layer of the plugin:
it imports neither the components nor the tools."""
