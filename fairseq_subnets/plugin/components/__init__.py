"""The fairseq components the plugin registers (the `subnets_wav2vec_ctc` model host, the tasks,
the `subnets_ctc` criterion, the generator, the learning-rate schedule, pretraining) and what they
run on: multilingual batches, seeded time masking, one-line errors. Imports the formats, never the
tools; `fairseq_subnets.plugin` imports the registering modules."""
