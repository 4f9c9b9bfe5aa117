"""Corpus tools: synthesize a spoken corpus offline, convert real corpora, check fairseq manifests.

This subpackage never imports fairseq or torch, so `fairseq-subnets data ...` starts quickly and the
checks can run before a training job pays for loading fairseq.

Modules: `text` (transcript normalization), `catalogues` (sentences from Django's .po files),
`corpora` (corpus definitions), `synth` (espeak-ng synthesis), `convert` (FLEURS, Common Voice,
MLS, plain folders), `manifest` (fairseq tsv/ltr/wrd/dict writers), `check` (manifest validation);
helpers: `audio` (16 kHz conversion), `files` (atomic writes, thread pool), `errors`.
"""
