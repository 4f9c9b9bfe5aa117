"""Corpus tools: synthesize a spoken corpus offline, convert real corpora, check fairseq manifests.

This subpackage never imports fairseq or torch, so the checks can run before a training job pays
for loading fairseq. Importing the subpackage imports none of its modules, and the modules that
read or write audio (numpy, scipy, soundfile) are imported by the `fairseq-subnets data` command
functions only, so `fairseq-subnets --help` and `data --help` load none of them
(tests/test_cli_parser.py checks both).

Modules: `text` (transcript normalization), `catalogues` (sentences from Django's .po files),
`corpora` (corpus definitions), `synth` (espeak-ng synthesis), `convert` (FLEURS, Common Voice,
MLS, plain folders), `manifest` (fairseq tsv/ltr/wrd/dict writers), `check` (manifest validation);
helpers: `audio` (16 kHz conversion), `files` (atomic writes, thread pool), `errors`.
"""
