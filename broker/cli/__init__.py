"""Sub-commands of `nightjar`: one module each, with add_parser() and run()."""
