"""Hidden states out of a trained model: per file (`embed_file`), per manifest (`extract`), batched."""
