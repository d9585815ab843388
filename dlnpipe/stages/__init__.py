"""The workflow's stages, one module each; ``python -m dlnpipe <stage>`` runs them (see dlnpipe.cli)."""
