"""The DBC files of the built-in protocols: every frame layout lives here, once."""
