"""The offline work behind the CLI and the experiment grids, on checkpoints that already exist:
`prune` (mask files from a checkpoint), `export` (a stock checkpoint with the transforms baked in)
and the updates an epoch takes. The top sub-layer of the plugin: nothing in it imports them."""
